"""Children in flight against declared GPUs over time, and the time to recover from a lost node,
on a multi-node cluster simulated on this machine: K=4 replicas x m=4 children, S=4 shards, on
2 nodes x 8 GPUs (declared: Ray hands them out without a physical GPU), one GPU per child, the
NB201 table's children sleeping 1/120 of their simulated training time. After 64 of 192
evaluations one node is killed with its 8 children and a replacement joins.

    python benchmarks/multinode.py [--plot docs/multinode_gpus.svg]

Prints the figures as JSON and writes the plot (an SVG) where asked.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def in_flight(records: list[dict], t0: float) -> list[tuple[float, int]]:
    """(seconds since t0, children running) at every start and end of a child."""
    events = sorted([(r["metrics"]["started_at"] - t0, 1) for r in records]
                    + [(r["metrics"]["started_at"] + r["metrics"]["wall_time_s"] - t0, -1) for r in records])
    running, steps = 0, []
    for t, step in events:
        running += step
        steps.append((t, running))
    return steps


def step_svg(steps: list[tuple[float, int]], capacity: int, mark: float, title: str, width: int = 640,
             height: int = 280) -> str:
    """A step plot of `steps` with a dashed line at `capacity` and a red mark at time `mark`."""
    pad, end = 40, max(t for t, _ in steps)
    top = max(capacity, max(n for _, n in steps)) + 1

    def xy(t: float, n: float) -> str:
        return f"{pad + (width - 2 * pad) * t / end:.1f},{height - pad - (height - 2 * pad) * n / top:.1f}"

    points, last = [], 0
    for t, n in steps:
        points += [xy(t, last), xy(t, n)]
        last = n
    return "\n".join([
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        'font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{pad}" y="16">{title}</text>',
        f'<polyline points="{xy(0, 0)} {xy(end, 0)}" stroke="black" fill="none"/>',
        f'<polyline points="{xy(0, capacity)} {xy(end, capacity)}" stroke="grey" stroke-dasharray="4" fill="none"/>',
        f'<polyline points="{xy(mark, 0)} {xy(mark, top)}" stroke="#d62728" fill="none"/>',
        f'<polyline points="{" ".join(points)}" stroke="#4a7fb5" fill="none" stroke-width="1.5"/>',
        f'<text x="{pad}" y="{height - pad + 16}">0 s</text>',
        f'<text x="{width - pad}" y="{height - pad + 16}" text-anchor="end">{end:.0f} s</text>',
        f'<text x="4" y="{pad + 4}">{top}</text>',
        "</svg>",
    ]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plot", type=Path, help="write the children-in-flight plot (SVG) here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "raynas.controller.bench.multinode", "gpu_timeline", tmp], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        d = json.loads((Path(tmp) / "gpu_timeline.json").read_text())
    lost = d["lost"]
    # A child that ran out of retries has no start on record: counted apart, not plotted.
    records = [r for r in d["records"] if "started_at" in r["metrics"]]
    t0 = min(r["metrics"]["started_at"] for r in records)
    steps = in_flight(records, t0)
    on_replacement = [r["metrics"]["started_at"] for r in records if r["metrics"]["node"] == lost["replacement"]]
    loss = lost["at"] - t0
    # Time-weighted: the mean number of children running from the first start to the loss.
    busy = sum((min(b, loss) - a) * n for (a, n), (b, _) in zip(steps, steps[1:]) if a < loss)
    figures = {
        "command": "python benchmarks/multinode.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "evaluations": len(d["records"]), "unique": len({r["id"] for r in d["records"]}), "gpus": d["gpus"],
        "failed": sum(r["status"] != "ok" for r in d["records"]),
        "most_children_in_flight": max(n for _, n in steps),
        "mean_in_flight_before_the_loss": round(busy / loss, 2) if loss > 0 else 0.0,
        "lost_at_record": lost["records"], "retries": d["result"]["retries"],
        "replacement_joined_s_after_loss": round(lost["replaced_at"] - lost["at"], 2),
        "first_child_on_replacement_s_after_loss":
            round(min(on_replacement) - lost["at"], 2) if on_replacement else None,
        "search_wall_s": round(d["result"]["wall_time_s"], 1),
        "gradients_lost": d["result"]["gradients"]["lost"],
    }
    if args.plot:
        args.plot.write_text(step_svg(steps, d["gpus"], loss,
                                      "children in flight (line) against the 16 declared GPUs (dashed); "
                                      "a node with 8 GPUs is lost at the red mark"))
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
