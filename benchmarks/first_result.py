"""Where a search's start-up goes: runs a command (by default the README's main job, `nas search`)
and prints each line it writes with the seconds since it started, so its phase lines (Ray
starting, each actor started) and its first progress line (the first recorded result) read as a
timeline; with the load average before and after.

    python benchmarks/first_result.py [--out DIR] [-- COMMAND ...]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="the search's run directory (default: a new temporary one)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="after --: the command (default: nas search --out OUT)")
    args = p.parse_args()
    command = [a for a in args.command if a != "--"] or ["nas", "search", "--out",
                                                         args.out or tempfile.mkdtemp(prefix="first-result-")]
    print(f"command: {' '.join(command)}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    for line in child.stdout:
        sys.stdout.write(f"{time.perf_counter() - start:7.2f} {line}")
        sys.stdout.flush()
    code = child.wait()
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    sys.exit(code)


if __name__ == "__main__":
    main()
