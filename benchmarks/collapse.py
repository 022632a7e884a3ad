"""Skip-connections in the derived genotype per epoch, DARTS against NoisyDARTS, on the
same data and seeds: the collapse monitor as a benchmark.

Both search the NB201 supernet (the space where DARTS is reported to drift to all-skip cells)
on the bundled digits, each with its own published search settings (NoisyDARTS: batch 128,
lr 0.05, lambda 0.2), at a width and depth this CPU can afford. `--matched` gives NoisyDARTS
DARTS' batch size and learning rate, so that the noise is the only difference.

    python benchmarks/collapse.py [--epochs 12] [--seeds 3] [--channels 8] [--layers 1] [--matched]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time

from raynas.search_spaces import get_space
from raynas.workers.datasets import load_dataset
from raynas.workers.oneshot import search_config, search_epochs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--layers", type=int, default=1, help="cells per stage")
    parser.add_argument("--algorithms", default="darts,noisy-darts")
    parser.add_argument("--matched", action="store_true", help="every algorithm with DARTS' batch size and lr")
    args = parser.parse_args(argv)
    space = get_space("nb201")
    data = load_dataset("digits", seed=0)
    out = {"command": "python benchmarks/collapse.py " + shlex.join(sys.argv[1:] if argv is None else argv)}
    matched = {"batch_size": 64, "lr": 0.025} if args.matched else {}
    for algorithm in args.algorithms.split(","):
        runs, start = [], time.perf_counter()
        for seed in range(args.seeds):
            config = search_config(algorithm)(epochs=args.epochs, channels=args.channels, layers=args.layers,
                                              device="cpu", **matched)
            runs.append(list(search_epochs(space, data, config, seed)))
        out[algorithm] = {
            "skip_count_mean_per_epoch": [round(statistics.fmean(r[e]["skip_count"] for r in runs), 2)
                                          for e in range(args.epochs)],
            "final_skip_counts": [r[-1]["skip_count"] for r in runs],
            "final_val_acc_mean": round(statistics.fmean(r[-1]["val_acc"] for r in runs), 4),
            "entropy_fraction_final_mean": round(statistics.fmean(r[-1]["alpha_entropy_fraction"] for r in runs), 4),
            "final_genotypes": [r[-1]["genotype"] for r in runs],
            "seconds": round(time.perf_counter() - start, 1),
        }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
