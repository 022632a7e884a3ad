"""ASHA (Ray Tune's ASHAScheduler over random proposals, `--scheduler asha`) against plain random
search and regularized evolution at the same total training epochs, on the train evaluator.

Per seed: ASHA evaluates `--trials` children (r = `--grace-period`, R = `--max-budget`,
eta = `--reduction-factor`) and the epochs it trained are counted; random search and evolution
then each train round(epochs / R) children to the full R epochs. Printed: per method, the
epochs and wall time spent and the best validation accuracy (of any child, at the budget it
reached) reached by fractions of the slowest run's wall time, mean and standard deviation over
seeds. Every search runs on one local Ray with `--workers` concurrent children.

    python benchmarks/asha.py --dataset digits --seeds 3
    python benchmarks/asha.py --dataset cifar10 --data PATH/cifar10_lossless_5k.npz --seeds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from raynas.controller import cluster
from raynas.controller.runtime.job import SearchJob
from raynas.controller.runtime.spec import SearchSpec

FRACTIONS = (0.25, 0.5, 0.75, 1.0)


def val_acc(record: dict) -> float | None:
    curve = record.get("metrics", {}).get("val_curve") or []
    return curve[-1] if record.get("status") == "ok" and curve else None


def run(spec: SearchSpec, out: Path) -> dict:
    start = time.time()
    result = SearchJob(spec, out, progress=False).run()
    records = [json.loads(line) for line in (out / "evaluations.jsonl").read_text().splitlines() if line]
    points = sorted((r["finished_at"] - start, val_acc(r)) for r in records if val_acc(r) is not None)
    epochs = sum(r["metrics"].get("budget", 0) for r in records if r.get("status") == "ok")
    return {"wall_s": time.time() - start, "epochs": epochs, "children": len(records), "points": points,
            "best": max((v for _, v in points), default=None), "scheduler": result.get("scheduler")}


def best_by(points: list[tuple[float, float]], t: float) -> float | None:
    seen = [v for when, v in points if when <= t]
    return max(seen) if seen else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data", default=None, help="the dataset's file (cifar10: the 5,000-image subset)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--trials", type=int, default=27, help="children ASHA evaluates")
    p.add_argument("--grace-period", type=int, default=1)
    p.add_argument("--max-budget", type=int, default=9)
    p.add_argument("--reduction-factor", type=float, default=3.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--population", type=int, default=4, help="evolution's population (tournament of half)")
    p.add_argument("--evaluator-option", "--train-option", dest="train_option", action="append",
                   default=["channels=8", "layers=1"], help="child-training option K=V (default channels=8 layers=1)")
    p.add_argument("--out", default=None, help="keep the run directories here")
    args = p.parse_args()
    train = {}
    for item in args.train_option:
        key, value = item.split("=", 1)
        train[key] = json.loads(value) if value[:1].isdigit() or value in ("true", "false") else value
    base = dict(space="nb201", evaluator="train", dataset=args.dataset, data_path=args.data, workers=args.workers,
                evaluator_options=train)
    cluster.connect(None, quiet=True)
    root = Path(args.out or tempfile.mkdtemp(prefix="asha-bench-"))
    runs: dict[str, list[dict]] = {"asha": [], "random": [], "evolution": []}
    for seed in range(args.seeds):
        asha = run(SearchSpec(**base, strategy="random", seed=seed, evaluations=args.trials, scheduler="asha",
                              grace_period=args.grace_period, max_budget=args.max_budget,
                              reduction_factor=args.reduction_factor), root / f"asha-{seed}")
        runs["asha"].append(asha)
        children = max(1, round(asha["epochs"] / args.max_budget))
        full = {**base, "evaluator_options": {**train, "epochs": args.max_budget}, "seed": seed,
                "evaluations": children}
        runs["random"].append(run(SearchSpec(**full, strategy="random"), root / f"random-{seed}"))
        runs["evolution"].append(run(SearchSpec(
            **full, strategy="evolution",
            strategy_options={"population_size": args.population, "sample_size": max(1, args.population // 2)}),
            root / f"evolution-{seed}"))
        print(f"seed {seed}: " + ", ".join(f"{m} {r[-1]['epochs']} epochs {r[-1]['wall_s']:.0f} s best "
                                           f"{r[-1]['best']:.4f}" for m, r in runs.items()), flush=True)

    def stat(values: list[float], digits: int = 4) -> str:
        """Mean ± standard deviation; a seed with no child finished yet is counted out, and said so."""
        seen = [v for v in values if v is not None]
        if not seen:
            return "-"
        sd = statistics.stdev(seen) if len(seen) > 1 else 0.0
        text = f"{statistics.fmean(seen):.{digits}f} ± {sd:.{digits}f}"
        return text if len(seen) == len(values) else f"{text} ({len(seen)}/{len(values)} seeds)"

    print(f"\n{args.dataset}: {args.seeds} seeds, r={args.grace_period} R={args.max_budget} "
          f"eta={args.reduction_factor:g}, {args.trials} ASHA children, {args.workers} workers, train {train}")
    header = ["method", "children", "epochs", "wall s"] + [f"best @{f:.0%} time" for f in FRACTIONS]
    print(" | ".join(header))
    for method, rs in runs.items():
        cells = [method, stat([r["children"] for r in rs], 1), stat([r["epochs"] for r in rs], 1),
                 stat([r["wall_s"] for r in rs], 0)]
        for f in FRACTIONS:
            # The same instants for every method: fractions of the slowest run of that seed.
            cells.append(stat([best_by(r["points"], f * max(x[seed]["wall_s"] for x in runs.values()))
                               for seed, r in enumerate(rs)]))
        print(" | ".join(cells))
    print(f"run directories: {root}")


if __name__ == "__main__":
    main()
