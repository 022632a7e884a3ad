"""NAS-Bench-201 one-shot table on CIFAR-10: DARTS (first and second order), NoisyDARTS and random
search with weight sharing, each searching the NB201 supernet on CIFAR-10 with its own seed, the
cell it names scored by its 200-epoch CIFAR-10 test accuracy from the table; mean +- std over
the seeds beside the published rows (NAS-Bench-201's table: DARTS-V1/V2 54.30, RSPS
84.07+-3.61, optimum 94.37).

Each search runs as a job's evaluation does (`OneShotSearch` in front of the table evaluator),
with the algorithm's published settings except where a flag shrinks them. Every finished
search is appended to --log, and a rerun with the same --log skips the ones it holds, so a long
run can be stopped and continued.

    python benchmarks/oneshot_nb201.py --data CIFAR10 [--algorithms darts,darts2,noisy-darts,rsws]
        [--seeds 3] [--epochs E] [--channels C] [--layers N] [--max-batches B] [--max-train M]
        [--archs A] [--score-batches S] [--block K] [--rescore-top T] [--threads T] [--log FILE]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

from raynas.search_spaces import get_space
from raynas.workers.datasets import load_dataset
from raynas.workers.evaluation import get_evaluator
from raynas.workers.oneshot import OneShotSearch, RSWSConfig, search_config

PUBLISHED = {"darts": "DARTS-V1 54.30", "darts2": "DARTS-V2 54.30", "noisy-darts": "not retrieved",
             "rsws": "RSPS 84.07 +- 3.61", "optimum": "94.37"}


def config(algorithm: str, args: argparse.Namespace):
    shared = {k: v for k, v in {"epochs": args.epochs, "channels": args.channels, "layers": args.layers,
                                "batch_size": args.batch_size, "max_batches_per_epoch": args.max_batches,
                                "num_threads": args.threads}.items() if v is not None}
    if algorithm == "rsws":
        ranking = {k: v for k, v in {"archs": args.archs, "score_batches": args.score_batches, "block": args.block,
                                     "rescore_top": args.rescore_top}.items() if v is not None}
        return RSWSConfig(device="cpu", **shared, **ranking)
    return search_config(algorithm)(device="cpu", **shared)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="CIFAR-10 (.npz or the python batches); default: the bundled digits, a proxy")
    parser.add_argument("--algorithms", default="darts,darts2,noisy-darts,rsws")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--channels", type=int)
    parser.add_argument("--layers", type=int, help="cells per stage")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--max-batches", type=int, help="weight steps per epoch")
    parser.add_argument("--max-train", type=int, help="training images kept (before the search halves them)")
    parser.add_argument("--archs", type=int, help="rsws: architectures ranked")
    parser.add_argument("--score-batches", type=int, help="rsws: minibatches per architecture")
    parser.add_argument("--block", type=int, help="rsws: architectures per ranking block")
    parser.add_argument("--rescore-top", type=int, help="rsws: re-scored per block")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--log", help="JSON lines of finished searches, read back to skip them on a rerun")
    args = parser.parse_args(argv)
    name, path = ("cifar10", args.data) if args.data else ("digits", None)
    data = load_dataset(name, path, seed=0, max_train=args.max_train)
    space = get_space("nb201")
    table = get_evaluator("table", space, dataset="cifar10")
    log = Path(args.log) if args.log else None
    done = [json.loads(line) for line in log.read_text().splitlines()] if log and log.exists() else []
    for algorithm in args.algorithms.split(","):
        cfg = config(algorithm, args)
        for seed in range(args.seeds):
            if any(r["algorithm"] == algorithm and r["seed"] == seed for r in done):
                continue
            start = time.perf_counter()
            result = OneShotSearch(space, data, cfg, table).evaluate(None, seed)
            one_shot = result.metrics.get("one_shot", {})
            record = {"algorithm": algorithm, "seed": seed, "status": result.status, "reason": result.reason,
                      "arch": result.arch, "test_acc_200ep": result.metrics.get("test_acc_200ep"),
                      "skip_count": one_shot.get("skip_count"), "supernet_val_acc": one_shot.get("val_acc"),
                      "alpha_entropy_fraction": one_shot.get("alpha_entropy_fraction"),
                      "search_time_s": one_shot.get("search_time_s"), "wall_s": round(time.perf_counter() - start, 1),
                      "config": {k: v for k, v in vars(cfg.resolved("nb201")).items() if k != "arch_betas"}}
            done.append(record)
            if log:
                with log.open("a") as f:
                    f.write(json.dumps(record) + "\n")
            print(json.dumps({k: record[k] for k in ("algorithm", "seed", "test_acc_200ep", "skip_count", "wall_s")}),
                  file=sys.stderr, flush=True)
    out = {"command": "python benchmarks/oneshot_nb201.py " + shlex.join(sys.argv[1:] if argv is None else argv),
           "dataset": data.info(), "published": PUBLISHED}
    for algorithm in args.algorithms.split(","):
        runs = [r for r in done if r["algorithm"] == algorithm and r["test_acc_200ep"] is not None]
        accs = [r["test_acc_200ep"] for r in runs]
        out[algorithm] = {
            "test_acc_200ep_mean": round(statistics.fmean(accs), 2) if accs else None,
            "test_acc_200ep_std": round(statistics.stdev(accs), 2) if len(accs) > 1 else None,
            "runs": [{k: r.get(k) for k in ("seed", "test_acc_200ep", "skip_count", "alpha_entropy_fraction", "arch",
                                            "wall_s")} for r in runs],
        }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
