"""NAO against random search, regularized evolution and REINFORCE on NAS-Bench-201, every
strategy on the same seeds in one run, with the benchmark's protocol (`nas bench nb201`:
search by 12-epoch CIFAR-10 validation accuracy, report the 200-epoch test accuracy of the
architecture chosen), the quality of what each strategy proposes once its first 10 results are
in (NAO's seed architectures: the mean 12-epoch validation accuracy of evaluations 11 on, and how
many of them are in the table's top 5 % by that accuracy), and the NAO predictor's rank
correlation against the number of architectures it was trained on.

    python benchmarks/nao_nb201.py [--evaluations 100] [--seeds 100] [--jobs 2]
        [--nao-option seed_archs=20 ...] [--strategies random,evolution,rl,nao]

REINFORCE runs with NAS-Bench-201's settings (lr 0.01, one architecture per update, EMA 0.9),
evolution with REA's (population 10, tournament 3). Two figures on NAO's predictor:
- in the search: Kendall's tau between the predicted and the measured rewards of each round's
  new results, before NAO was trained on them, grouped by how many results it had been
  trained on;
- offline: NAO trained on n random architectures (`--curve`), tau on 1,000 others.
"""

from __future__ import annotations

import argparse
import functools
import json
import shlex
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

import numpy as np

from raynas.controller.cli.flags import key_value
from raynas.controller.runtime.ledger import Ledger
from raynas.controller.runtime.loop import run_loop
from raynas.controller.strategies import get_strategy
from raynas.search_spaces import get_space
from raynas.workers.evaluation import get_evaluator
from raynas.workers.evaluation.table import load_table
from raynas.workers.execution import InProcessExecutor
from raynas.workers.nao import NAOConfig, NAOController, kendall_tau

#: NAO's settings for budgets of a few hundred evaluations (the defaults are NAO_pytorch's, for 1,000s).
NAO_SMALL = {"seed_archs": 10, "new_archs": 10, "top_k": 10, "epochs": 100, "batch_size": 100, "max_step_size": 100}
BASELINES = {"random": {}, "evolution": {}, "rl": {"lr": 0.01, "batch_size": 1, "baseline_decay": 0.9}}
#: tau is grouped by the training pool's size in bins of this many architectures.
BIN = 50
#: Evaluations that every strategy spends before it can use a result (NAO's seed architectures).
WARM_UP = NAO_SMALL["seed_archs"]


@functools.cache
def top_share_threshold(share: float = 0.05) -> float:
    """The 12-epoch CIFAR-10 validation accuracy (as a reward) that the table's best `share` reach."""
    column = sorted(load_table("cifar10").columns["valid_acc_12ep"], reverse=True)
    return column[int(len(column) * share) - 1] / 100.0


def one_search(strategy: str, options: dict[str, Any], evaluations: int, seed: int) -> dict[str, Any]:
    space = get_space("nb201")
    evaluator = get_evaluator("table", space)
    s = get_strategy(strategy, space, seed=seed, **options)
    ledger = Ledger(None, evaluations, seed)
    start = time.perf_counter()
    run_loop(s, InProcessExecutor(evaluator), ledger)
    best = max((r for r in ledger.records if r["reward"] is not None), key=lambda r: r["reward"])
    later = [r["reward"] for r in ledger.records[WARM_UP:] if r["reward"] is not None]
    top = top_share_threshold()
    return {"strategy": strategy, "seed": seed, "test_acc": best["metrics"]["test_acc_200ep"],
            "chosen_reward": best["reward"], "proposal_reward": statistics.fmean(later),
            "proposals_top5": sum(r >= top for r in later), "wall_time_s": time.perf_counter() - start,
            "signals": s.signals()}


def predictor_curve(sizes: list[int], options: dict[str, Any], seeds: int) -> list[tuple[int, float, float]]:
    """(n, mean tau, std tau) of NAO's predictor trained on n random architectures, on 1,000 others."""
    space = get_space("nb201")
    evaluator = get_evaluator("table", space)
    rows = []
    for n in sizes:
        taus = []
        for seed in range(seeds):
            rng = np.random.default_rng(seed)
            archs = list({str(a): a for a in (space.sample(rng) for _ in range(n + 1000))}.values())
            train, test = archs[:n], archs[n:n + 1000]
            nao = NAOController(space, NAOConfig(**options), seed)
            nao.fit(train, [evaluator.evaluate(a).reward for a in train])
            taus.append(kendall_tau(nao.predict(test), [evaluator.evaluate(a).reward for a in test]))
        rows.append((n, statistics.fmean(taus), statistics.pstdev(taus)))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--evaluations", type=int, default=100)
    p.add_argument("--seeds", type=int, default=100)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="processes running searches side by side")
    p.add_argument("--strategies", default="random,evolution,rl,nao")
    p.add_argument("--nao-option", action="append", type=key_value, default=[], metavar="KEY=VALUE",
                   help=f"overrides of NAO's small-budget settings {NAO_SMALL}")
    p.add_argument("--curve", default="", help="training-set sizes for the offline predictor curve, e.g. 10,25,50,100")
    p.add_argument("--json", help="also write every search's figures to this file")
    args = p.parse_args()
    print("command: python " + " ".join(shlex.quote(a) for a in sys.argv), flush=True)
    nao_options = {**NAO_SMALL, **dict(args.nao_option)}
    strategies = [s for s in args.strategies.split(",") if s]
    options = {**BASELINES, "nao": nao_options}
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    start = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(one_search, s, options.get(s, {}), args.evaluations, seed)
                   for s in strategies for seed in seeds]
        runs = []
        for future in as_completed(futures):
            runs.append(future.result())
            r = runs[-1]
            print(f"  [{len(runs)}/{len(futures)}] {r['strategy']} seed {r['seed']}: {r['test_acc']:.2f} "
                  f"({r['wall_time_s']:.0f} s)", file=sys.stderr, flush=True)
    wall = time.perf_counter() - start
    print(f"NAS-Bench-201 cifar10, {args.evaluations} evaluations, seeds {seeds.start}..{seeds.stop - 1}, "
          f"{args.jobs} processes, {wall:.0f} s in all")
    print(f"NAO options: {json.dumps(nao_options, sort_keys=True)}")
    print(f"{'strategy':<12} {'test acc (200 ep)':>20} {'min':>7} {'max':>7} {'s per search':>13} "
          f"{'its val acc (12 ep)':>20} {f'val acc of evaluations {WARM_UP + 1} on':>30} "
          f"{'of them in the top 5 %':>23}")
    for s in strategies if runs else ():  # --seeds 0 --curve ...: the predictor curve alone
        mine = [r for r in runs if r["strategy"] == s]
        accs = [r["test_acc"] for r in mine]
        later = [r["proposal_reward"] for r in mine]
        print(f"{s:<12} {statistics.fmean(accs):>12.2f} ± {statistics.pstdev(accs):.2f} {min(accs):>7.2f} "
              f"{max(accs):>7.2f} {statistics.fmean(r['wall_time_s'] for r in mine):>13.2f} "
              f"{statistics.fmean(r['chosen_reward'] for r in mine):>20.4f} "
              f"{statistics.fmean(later):>22.4f} ± {statistics.pstdev(later):.4f} "
              f"{statistics.fmean(r['proposals_top5'] for r in mine):>23.1f}")
    rounds = [r for run in runs if run["strategy"] == "nao" for r in run["signals"]]
    if rounds:
        print("NAO in the search: Kendall tau of each round's new results, before training on them, "
              "by the results it had been trained on")
        bins: dict[int, list[float]] = {}
        for r in rounds:
            if r["predictor_tau"] is not None:
                bins.setdefault(r["predictor_trained_on"] // BIN * BIN, []).append(r["predictor_tau"])
        for low in sorted(bins):
            taus = bins[low]
            print(f"  trained on {low:>4}-{low + BIN - 1:<4} tau {statistics.fmean(taus):+.3f} ({len(taus)} rounds)")
        recon = [r["reconstruction_acc"] for r in rounds if r.get("reconstruction_acc") is not None]
        new = sum(r["new_proposals"] for r in rounds)
        fill = sum(r["random_fill"] for r in rounds)
        print(f"  reconstruction accuracy {statistics.fmean(recon):.3f}; proposals from embedding steps {new}, "
              f"uniform fill {fill}")
    if args.curve:
        sizes = [int(n) for n in args.curve.split(",")]
        curve_options = {k: v for k, v in nao_options.items() if k not in ("seed_archs", "new_archs", "top_k")}
        print("NAO's predictor offline: trained on n random architectures, Kendall tau on 1,000 others (10 seeds)")
        for n, tau, std in predictor_curve(sizes, curve_options, 10):
            print(f"  n = {n:>4}  tau {tau:+.3f} ± {std:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": sys.argv, "nao_options": nao_options, "runs": runs}, f)


if __name__ == "__main__":
    main()
