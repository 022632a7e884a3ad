"""Where a search's start-up goes: runs a command (by default the README's main job, `nas search`)
and prints each line it writes with the seconds since it started, so its phase lines (Ray
starting, each actor started) and its first progress line (the first recorded result) read as a
timeline; with the load average before and after, and, when the first result arrives, the CPU
seconds each of the command's processes (the driver, Ray's own, each actor) had used by then
(from `ps`: Linux).

    python benchmarks/first_result.py [--out DIR] [-- COMMAND ...]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

#: A progress line: `[###....] 1/24 best ...`.
PROGRESS = re.compile(r"\[[#.]+\] \d+/\d+ ")


def print_cpu(root: int) -> None:
    """CPU seconds (user + system) of `root` and every process below it, busiest first (/proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    procs = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = open(f"/proc/{entry}/stat").read()
            name = open(f"/proc/{entry}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # not a process, or one that ended meanwhile
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, ...
        procs[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick, name.strip())
    tree, grew = {root}, True
    while grew:
        below = {pid for pid, (ppid, _, _) in procs.items() if ppid in tree} - tree
        tree |= below
        grew = bool(below)
    mine = sorted((procs[p][1:] for p in tree if p in procs), key=lambda x: -x[0])
    print(f"CPU seconds by the first result: {sum(c for c, _ in mine):.1f} in {len(mine)} processes")
    for cpu, name in mine:
        if cpu >= 0.05:
            print(f"  {cpu:5.1f} {name[:100]}")


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
    first = True
    for line in child.stdout:
        sys.stdout.write(f"{time.perf_counter() - start:7.2f} {line}")
        sys.stdout.flush()
        if first and PROGRESS.match(line):
            first = False
            print_cpu(child.pid)
    code = child.wait()
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    sys.exit(code)


if __name__ == "__main__":
    main()
