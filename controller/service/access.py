"""Who is calling: the service's clients and their bearer tokens.

Zero-config, the service has one token whose holder is an admin (single-token mode). With a
tokens file each client has its own token and name; a search belongs to the client that
submitted it, and a client sees and controls only its own searches unless it is an admin.

The tokens file has one client per line, `#` starting a comment:

    # name   token                                                              role
    alice    5b0d3c1e0f9a4e6c8d7b2a1f3e5c7a9b0d2f4e6a8c1b3d5f7e9a0c2e4f6a8b0d
    ops      9f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0  admin

Names are 1 to 64 letters, digits, `.`, `_` or `-`; tokens at least 32 characters (e.g.
`openssl rand -hex 32`). The file must be readable by its owner only (chmod 600).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from raynas.common import ConfigError

log = logging.getLogger(__name__)
NAME_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MIN_TOKEN_LENGTH = 32
#: The one client of single-token mode.
SINGLE_CLIENT = "default"


@dataclass(frozen=True)
class Client:
    name: str
    admin: bool = False

    def sees(self, owner: str) -> bool:
        """Whether this client may see and control a search that `owner` submitted."""
        return self.admin or owner == self.name


class Tokens:
    """The clients by token. Tokens are kept only as SHA-256 digests, so that looking one up
    compares digests, not the secrets themselves."""

    def __init__(self, clients: dict[str, Client]):
        self._by_digest = {_digest(token): client for token, client in clients.items()}

    @classmethod
    def single(cls, token: str) -> Tokens:
        """Single-token mode: whoever holds `token` is the admin."""
        if not token:
            raise ConfigError("token", "empty token", "a non-empty secret from --token-file or NAS_TOKEN")
        return cls({token: Client(SINGLE_CLIENT, admin=True)})

    @classmethod
    def load(cls, path: str | Path) -> Tokens:
        path = Path(path)
        if not path.is_file():
            raise ConfigError("tokens_file", f"file not found: {path}")
        private_file("tokens_file", path)
        clients: dict[str, Client] = {}
        names: set[str] = set()
        for number, line in enumerate(path.read_text().splitlines(), 1):
            parts = line.split("#", 1)[0].split()
            if not parts:
                continue
            where = f"{path}, line {number}"
            if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "admin"):
                raise ConfigError("tokens_file", f"{where}: expected NAME TOKEN [admin]")
            name, token = parts[:2]
            if not NAME_PATTERN.match(name):
                raise ConfigError("tokens_file", f"{where}: {name!r} is not a valid client name",
                                  "1 to 64 letters, digits, ., _ or -")
            if len(token) < MIN_TOKEN_LENGTH:
                raise ConfigError("tokens_file", f"{where}: the token of {name} is too short",
                                  f"at least {MIN_TOKEN_LENGTH} characters, e.g. openssl rand -hex 32")
            if name in names or token in clients:
                raise ConfigError("tokens_file", f"{where}: {'name ' + name if name in names else 'token'} "
                                  "appears twice; each client needs its own")
            names.add(name)
            clients[token] = Client(name, admin=len(parts) == 3)
        if not clients:
            raise ConfigError("tokens_file", f"{path} names no client", "lines of NAME TOKEN [admin]")
        return cls(clients)

    def share(self, limit: int) -> int:
        """One client's share of a limit of the service: an even split among the clients (at least 1)."""
        return max(1, -(-limit // len(self._by_digest)))

    def identify(self, authorization: str) -> Client | None:
        """The client an `authorization` metadata value (`Bearer <token>`) belongs to, else None."""
        scheme, _, token = authorization.partition(" ")
        if scheme != "Bearer" or not token:
            return None
        return self._by_digest.get(_digest(token))


def private_file(field: str, path: Path) -> None:
    """Refuse a secret (a tokens file, a TLS key) that other users of the machine can read."""
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(field, f"{path} is open to other users",
                          f"chmod 600 {path} (a Kubernetes Secret: mount it with defaultMode: 0400)")


def private_folder(field: str, path: Path) -> None:
    """Make one of the service's own folders owner-only if it is not (it may predate the service)."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        try:
            os.chmod(path, 0o700)
        except OSError as exc:
            raise ConfigError(field, f"{path} is open to other users (mode {mode:o}) and cannot be made private: "
                              f"{exc.strerror}", f"chmod 700 {path}, or a folder of the service's own user") from None
        log.warning("%s was open to other users (mode %o); made it owner-only (700)", path, mode)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
