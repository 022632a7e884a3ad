"""How much of the scheme's utilisation the budget's tail loses to the noise of child durations:
`nas bench nb201 --strategy rl` at the paper's scale (K=100, m=8, S=20, W=800 by default) on the
virtual clock (controller/bench/simulate.py), with the actual durations drawn around the
scheduler's estimate with log-normal noise of each given sigma (0: exact durations, the ceiling of
the scheduler's own order).

    python benchmarks/tail_noise.py [--evaluations 4000] [--seeds 0 1 2] [--noise 0 0.05 0.1]

Prints, per noise and seed, the worker utilisation, the simulated wall time and the 200-epoch test
accuracy of the best architecture found (as `nas bench nb201` picks it).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

from raynas.controller.bench.nb201 import chosen_curve
from raynas.controller.bench.simulate import simulate_scheme
from raynas.controller.runtime.plan import resolve
from raynas.controller.runtime.spec import SearchSpec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--evaluations", type=int, default=4000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.05, 0.1])
    p.add_argument("--controllers", type=int, default=100)
    p.add_argument("--children", type=int, default=8)
    p.add_argument("--ps-shards", type=int, default=20)
    p.add_argument("--workers", type=int, default=800)
    args = p.parse_args()
    print("command: python " + " ".join(shlex.quote(a) for a in sys.argv))
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    plan = resolve(SearchSpec(space="nb201", evaluator="table", strategy="rl", runtime="local"))
    space, evaluator = plan.space, plan.make_evaluator()  # as `nas bench nb201` builds them
    print("noise | seed | utilisation | simulated wall s | test acc of the best found | simulation wall s")
    for noise in args.noise:
        for seed in args.seeds:
            start = time.perf_counter()
            ledger, figures = simulate_scheme(space, evaluator, args.evaluations, seed, args.controllers,
                                              args.children, args.ps_shards, workers=args.workers, noise=noise)
            chosen = chosen_curve(ledger.records)[-1]
            print(f"{noise:g} | {seed} | {figures['worker_utilization']:.1%} | "
                  f"{figures['simulated_wall_time_s']:.0f} | {chosen:.2f} | "
                  f"{time.perf_counter() - start:.0f}", flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
