"""`nas serve` and its client commands: submit, status, watch, cancel, resume, result, delete."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import sys
import threading
from functools import partial
from pathlib import Path

from raynas.common import ConfigError
from raynas.controller.runtime.progress import evaluations_line, one_shot_epoch
from raynas.controller.service.limits import (
    CANCEL_GRACE_S,
    DEFAULT_PORT,
    MAX_JOBS,
    MAX_SEARCH_TIME_S,
    MAX_WATCHERS,
    PLACEMENT_TIMEOUT_S,
)
from raynas.controller.service.registry import ACTIVE, RESUMABLE

FINAL_EXIT = {"succeeded": 0, "cancelled": 130, "interrupted": 3, "failed": 1}


def _serve_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--address", help="Ray cluster to join: auto, or HOST:PORT (default: an embedded single-node Ray)")
    s.add_argument("--host", help="interface to listen on (default: loopback only, all interfaces with TLS)")
    s.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"gRPC port (default {DEFAULT_PORT}; 0: any free)")
    s.add_argument("--state-dir", default="nas-state",
                   help="registry database and run directories, owner-only (default ./nas-state)")
    tokens = s.add_mutually_exclusive_group()
    tokens.add_argument("--token-file", help="file holding the one bearer token clients must send "
                                             "(default: $NAS_TOKEN, else one is generated into STATE_DIR/token)")
    tokens.add_argument("--tokens-file", help="one client per line: NAME TOKEN [admin]; each client sees and "
                                              "controls only its own searches unless admin (docs/service.md)")
    s.add_argument("--data-root", action="append", default=[], metavar="DIR",
                   help="a folder datasets may be read from (repeatable); without one, only the bundled digits")
    s.add_argument("--tls-cert", help="PEM certificate: serve TLS (needs --tls-key)")
    s.add_argument("--tls-key", help="PEM private key of --tls-cert (owner-only: chmod 600)")
    s.add_argument("--max-jobs", type=int, default=MAX_JOBS, help=f"searches running at once (default {MAX_JOBS})")
    s.add_argument("--max-jobs-per-client", type=int, metavar="N",
                   help="searches one client may run at once (default: --max-jobs split evenly among the clients "
                        "of --tokens-file; all of them with one token)")
    s.add_argument("--max-watchers", type=int, default=MAX_WATCHERS,
                   help=f"WatchSearch streams open at once (default {MAX_WATCHERS})")
    s.add_argument("--max-watchers-per-client", type=int, metavar="N",
                   help="WatchSearch streams one client may hold (default: --max-watchers split evenly, as above)")
    s.add_argument("--max-search-time", type=float, default=MAX_SEARCH_TIME_S, metavar="SECONDS",
                   help=f"a search still running this long after it started is stopped, then force-stopped after "
                        f"--cancel-grace (default {MAX_SEARCH_TIME_S:g}, a week); a spec's max_wall_time_s may "
                        "not exceed it")
    s.add_argument("--cancel-grace", type=float, default=CANCEL_GRACE_S, metavar="SECONDS",
                   help=f"time a cancelled search has to stop before it is force-stopped (default {CANCEL_GRACE_S:g})")
    s.add_argument("--autoscaling", action="store_true",
                   help="nodes may join the cluster: accept workers no node can hold yet, and fail the search if "
                        "none can after --placement-timeout")
    s.add_argument("--placement-timeout", type=float, default=PLACEMENT_TIMEOUT_S, metavar="SECONDS",
                   help=f"with --autoscaling (default {PLACEMENT_TIMEOUT_S:g})")


def _client_arguments(name: str, p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", help=f"HOST:PORT of `nas serve` (default $NAS_SERVER, else localhost:{DEFAULT_PORT})")
    p.add_argument("--token-file", help="file holding the service's token (default $NAS_TOKEN)")
    p.add_argument("--tls-ca", help="PEM CA certificate: connect with TLS")
    if name == "submit":
        # The spec's flags come from the plug-in registries: only submit pays for importing them.
        from raynas.controller.cli.flags import add_spec_arguments

        add_spec_arguments(p)
        p.add_argument("--name", default="", help="a name shown in listings")
        p.add_argument("--watch", action="store_true", help="then follow it like `nas watch`")
    elif name == "status":
        p.add_argument("id", nargs="?", help="search id (omit to list searches)")
        p.add_argument("--state", help="list only searches in this state")
        p.add_argument("--limit", type=int, default=20, help="searches to list (default 20, at most 100)")
    else:
        p.add_argument("id", help="search id")
    if name == "watch":
        p.add_argument("--skip", type=int, default=0, help="skip the first N evaluations (already seen)")
    if name in ("status", "result", "submit"):
        p.add_argument("--json", action="store_true", help="print the reply as JSON")


# -- the server ----------------------------------------------------------------------------

def server_token(token_file: str | None, state_dir: Path) -> tuple[str, str]:
    """The token and where it came from; generated (owner-only file) when none is configured."""
    from raynas.controller.api.client import TOKEN_ENV, read_token

    token = read_token(token_file)
    if token:
        return token, token_file or f"${TOKEN_ENV}"
    path = state_dir / "token"
    if not path.exists():
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    return read_token(str(path)), str(path)


def listen_host(host: str | None, tls: bool) -> str:
    """Where to listen: the explicit --host, else all interfaces with TLS and loopback
    without, so that no token crosses a network in plaintext unless asked to."""
    if host:
        return host
    return "[::]" if tls else "127.0.0.1"


def _or_share(given: int | None, tokens, limit: int) -> int:
    """A per-client limit: the one given, else each client's even share of `limit`."""
    return given if given is not None else tokens.share(limit)


def cmd_serve(args: argparse.Namespace) -> int:
    from raynas.controller.api.servicer import TLS, serve
    from raynas.controller.cluster import connect, shutdown
    from raynas.controller.service.access import Tokens
    from raynas.controller.service.manager import RayLauncher, SearchManager

    if bool(args.tls_cert) != bool(args.tls_key):
        raise ConfigError("tls_key" if args.tls_cert else "tls_cert", "TLS needs both --tls-cert and --tls-key")
    for root in args.data_root:
        if not Path(root).is_dir():
            raise ConfigError("data_root", f"not a folder: {root}")
    state_dir = Path(args.state_dir)
    if args.tokens_file:
        tokens, source = Tokens.load(args.tokens_file), f"the clients in {args.tokens_file}"
    else:
        token, where = server_token(args.token_file, state_dir)
        tokens, source = Tokens.single(token), f"one token from {where}"
    tls = TLS(args.tls_cert, args.tls_key) if args.tls_cert else None
    if tls:
        tls.credentials()  # a missing file fails here, before Ray starts
    host = listen_host(args.host, tls is not None)
    started = connect(args.address)
    manager = SearchManager(state_dir, RayLauncher(autoscaling=args.autoscaling), max_jobs=args.max_jobs,
                            max_jobs_per_client=_or_share(args.max_jobs_per_client, tokens, args.max_jobs),
                            data_roots=tuple(args.data_root), cancel_grace_s=args.cancel_grace,
                            placement_timeout_s=args.placement_timeout, max_search_time_s=args.max_search_time)
    server = serve(manager, tokens, host=host, port=args.port, tls=tls, max_watchers=args.max_watchers,
                   max_watchers_per_client=_or_share(args.max_watchers_per_client, tokens, args.max_watchers))
    print(f"nas serve: listening on {host}:{server.port} ({'TLS' if tls else 'plaintext'}); {source}; "
          f"state in {state_dir}; data roots: {', '.join(manager.data_roots) or 'none'}", file=sys.stderr, flush=True)
    if not tls and host not in ("127.0.0.1", "::1", "[::1]", "localhost"):
        print("nas serve: warning: tokens cross the network in plaintext; serve TLS (--tls-cert, --tls-key) "
              "or keep the port on a private network", file=sys.stderr, flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop()
    if started:
        print("nas serve: stopped; searches end with the embedded Ray (nas resume ID continues them)", file=sys.stderr)
        shutdown()
    else:
        print("nas serve: stopped; running searches go on on the cluster", file=sys.stderr)
    return 0


# -- clients -------------------------------------------------------------------------------

def _client(args: argparse.Namespace):
    from raynas.controller.api.client import SearchClient, read_token

    return SearchClient(args.server, read_token(args.token_file), args.tls_ca)


def _state(value: int) -> str:
    from raynas.controller.api.messages import STATE_FROM_PB

    return STATE_FROM_PB.get(value, "unspecified")


def _as_json(message) -> str:
    from raynas.controller.api.messages import message_to_dict

    return json.dumps(message_to_dict(message), indent=2, sort_keys=True)


def _line(search) -> str:
    best = f"best {search.best.reward:.4f}" if search.HasField("best") else "no result yet"
    budget = search.spec.evaluations if search.HasField("spec") else "?"
    return f"{search.id}  {_state(search.state):<11}  {search.evaluations_done}/{budget} evaluations  {best}"


def cmd_submit(args: argparse.Namespace) -> int:
    from raynas.controller.cli.flags import spec_data_from_args

    with _client(args) as client:
        search = client.submit(spec_data_from_args(args), args.name)
        print(_as_json(search) if args.json else search.id)
        if args.watch:
            return _follow(client, search.id, 0)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.id:
            search = client.get(args.id)
            if args.json:
                print(_as_json(search))
            else:
                print(_line(search))
                print(f"owner: {search.owner or '-'}\nrun directory: {search.run_dir}\n"
                      f"Ray namespace: {search.ray_namespace}")
                if search.error:
                    print(f"error: {search.error}")
            return 0
        page = client.list(args.limit, state=args.state)
        if args.json:
            print(_as_json(page))
        elif not page.searches:
            print(f"no {args.state} searches" if args.state else "no searches yet (nas submit starts one)")
        else:
            for search in page.searches:
                print(f"{search.id}  {_state(search.state):<11}  {search.evaluations_done} evaluations"
                      + (f"  best {search.best.reward:.4f}" if search.HasField("best") else ""))
    return 0


def _follow(client, search_id: str, skip: int) -> int:
    from raynas.controller.api.messages import struct_to_dict

    state = "unspecified"
    for event in client.watch(search_id, skip):
        kind = event.WhichOneof("event")
        if kind == "state_change":
            state = _state(event.state_change.state)
            print(f"[{search_id}] {state}" + (f": {event.state_change.error}" if event.state_change.error else ""),
                  flush=True)
        elif kind == "evaluation":
            e = event.evaluation
            shown = f"reward {e.reward:.4f}" if e.HasField("reward") else f"failed: {e.reason}"
            print(f"  {e.id:>6}  {shown}  {e.architecture.arch}", flush=True)
        elif kind == "new_best":
            print(f"  new best {event.new_best.reward:.4f} ({event.new_best.id})", flush=True)
        elif kind == "rung_decision":
            d = event.rung_decision
            print(f"  {d.evaluation:>6}  rung {d.rung:g}: {d.value:.4f} "
                  f"{'promoted' if d.promoted else 'stopped'}"
                  + (f" (cutoff {d.cutoff:.4f})" if d.HasField("cutoff") else ""), flush=True)
        elif kind == "strategy_signal":
            m = struct_to_dict(event.strategy_signal.signals)
            shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in sorted(m.items()))
            print(f"  strategy iteration {event.strategy_signal.iteration}: {shown}", flush=True)
        else:
            e = event.one_shot_epoch
            print("  " + one_shot_epoch(e.run, e.epoch, struct_to_dict(e.monitors)), flush=True)
    return FINAL_EXIT.get(state, 0)


def cmd_watch(args: argparse.Namespace) -> int:
    with _client(args) as client:
        return _follow(client, args.id, args.skip)


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        search = client.cancel(args.id)
        state = _state(search.state)
        if state in ACTIVE:
            print(f"{search.id}: stop requested ({state}); resume later with: nas resume {search.id}")
        elif state in RESUMABLE:
            print(f"{search.id}: already {state}; nothing to stop (nas resume {search.id} continues it)")
        else:
            print(f"{search.id}: already {state}; nothing to stop")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    with _client(args) as client:
        print(_line(client.resume(args.id)))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        search = client.delete(args.id)
        print(f"{search.id}: deleted, with its run directory {search.run_dir}")
    return 0


def cmd_result(args: argparse.Namespace) -> int:
    with _client(args) as client:
        result = client.result(args.id)
        if args.json:
            from raynas.controller.api.messages import struct_to_dict

            print(json.dumps(struct_to_dict(result.summary), indent=2, sort_keys=True))
            return 0
        added = int(result.summary["evaluations_this_run"]) if "evaluations_this_run" in result.summary else None
        print(f"{result.search_id}: {_state(result.state)}, "
              f"{evaluations_line(result.evaluations, result.failed, added, result.wall_time_s)}")
        for rank, e in enumerate(result.top_k, 1):
            print(f"  {rank}. reward {e.reward:.4f}  {e.architecture.arch}")
        print(f"run directory: {result.run_dir}")
    return 0


_CLIENTS = {
    "submit": ("submit a search to the service; prints its id", cmd_submit),
    "status": ("one search's state and progress, or the list of searches", cmd_status),
    "watch": ("follow a search live until it ends", cmd_watch),
    "cancel": ("stop a search at its next safe point (resumable)", cmd_cancel),
    "resume": ("continue a cancelled or interrupted search", cmd_resume),
    "result": ("the best architecture and top-k of a finished search", cmd_result),
    "delete": ("forget an ended search and remove its run directory", cmd_delete),
}
#: name -> (help, arguments, run), as controller/cli/main.py reads them.
COMMANDS = {"serve": ("run the search service (gRPC) on the Ray head node", _serve_arguments, cmd_serve),
            **{name: (help_text, partial(_client_arguments, name), run)
               for name, (help_text, run) in _CLIENTS.items()}}
