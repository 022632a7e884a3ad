"""Results of `nas bench nb201 --json` run in parts (processes side by side, each its own seeds
with --first-seed) pooled into one table per dataset, and their anytime figures.

    python benchmarks/nb201_pool.py PART.json ... [--plot anytime.svg] [--json]

Parts of the same benchmark (strategy, options, dataset, evaluations, workers) become one row
over all their seeds (`pool_results`: exact pooled mean and standard deviation); parts sharing a
seed are refused. --plot writes one figure per dataset (anytime-cifar10.svg, ...)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from raynas.controller.bench.nb201 import format_compare, pool_results, write_plots
from raynas.controller.runtime.plot import figure_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("parts", nargs="+", help="files of nas bench nb201 --json (one result or a list)")
    parser.add_argument("--plot", metavar="FILE.svg", help="anytime figures, one per dataset")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.plot:
        figure_path(args.plot, "plot")
    results = []
    for part in args.parts:
        loaded = json.loads(Path(part).read_text())
        results += loaded if isinstance(loaded, list) else [loaded]
    pooled = pool_results(results)
    print(json.dumps(pooled, indent=2) if args.json else format_compare(pooled))
    for path in write_plots(pooled, args.plot) if args.plot else []:
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
