"""The comments of SearchSpec's plug-in fields in protos/nas/v1/search.proto (space, strategy,
evaluator, dataset), written from the registries so that the wire contract names every plug-in
there is: `python -m raynas.controller.api.proto_docs` rewrites them (tests/unit/test_protos.py
fails while they are stale). Comments are not in the generated code, which stays as it is."""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

from raynas.controller.runtime import catalogue
from raynas.protos.generate import PROTO_DIR

PROTO = PROTO_DIR / "search.proto"
#: The field of each plug-in kind, and what the comment says before the names.
FIELDS = {"space": ("space", "Search space"), "strategy": ("strategy", "Search strategy"),
          "evaluator": ("evaluator", "How children are scored"),
          "dataset": ("dataset", "The data children (and one-shot supernets) train on")}
WIDTH = 96


def comment(kind: str) -> list[str]:
    """The comment lines of the field of plug-ins of `kind`."""
    _, lead = FIELDS[kind]
    text = f"{lead}, one of " + "; ".join(f"{name}: {summary}" for name, summary in catalogue.entries(kind)) + "."
    return [f"  // {line}" for line in textwrap.wrap(text, WIDTH - 5)]


def updated(proto: str) -> str:
    """`proto` with the plug-in fields' comments as the registries give them."""
    for kind, (field, _) in FIELDS.items():
        pattern = re.compile(rf"((?:  //[^\n]*\n)+)(  optional string {field} = \d+;)")
        match = next((m for m in pattern.finditer(proto)), None)
        if match is None:
            raise SystemExit(f"no commented field {field} in {PROTO}")
        proto = proto[:match.start()] + "\n".join(comment(kind)) + "\n" + match.group(2) + proto[match.end():]
    return proto


def main() -> int:
    PROTO.write_text(updated(PROTO.read_text()))
    print(Path(PROTO))
    return 0


if __name__ == "__main__":
    sys.exit(main())
