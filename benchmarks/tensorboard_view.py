"""What the TensorBoard view costs an append to a run directory's evaluation log.

Appends the same NB201-like evaluation records (reward and nine metrics) to fresh run
directories, one record per append (the local runtime) and 32 per append (the recorder's
batches), with the view on and off, and times the view alone on records already on disk.
Printed: the median over `--repeats` of microseconds per record.

    python benchmarks/tensorboard_view.py
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from raynas.controller.runtime import rundir, tensorboard
from raynas.controller.runtime.rundir import RunDirectory


def record(i: int) -> dict:
    metrics = {"params": 1_073_000, "flops": 153_000_000, "test_acc_200ep": 93.1, "valid_acc_12ep": 80.2,
               "budget": 200, "simulated_time_s": 540.0, "wall_time_s": 0.001}
    return {"id": f"e{i:06d}", "index": i, "arch": "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|skip_connect~0|none~1|"
            "nor_conv_1x1~2|", "seed": i, "finished_at": time.time(), "status": "ok", "reward": 0.8 + i * 1e-6,
            "metrics": metrics}


def appends(records: int, batch: int) -> float:
    """Microseconds per record appended `batch` at a time to a fresh run directory."""
    run = RunDirectory.create(tempfile.mkdtemp() + "/run", {})
    start = time.perf_counter()
    for i in range(0, records, batch):
        run.append_many([record(j) for j in range(i, i + batch)])
    return (time.perf_counter() - start) / records * 1e6


def view_alone(records: int) -> float:
    run = RunDirectory.create(tempfile.mkdtemp() + "/run", {})
    run.append(record(0))
    board = tensorboard.RunBoard(run.path, run.evaluations, rundir.rank)
    board.write("evaluations", [record(0)])
    batch = [record(j) for j in range(1, records + 1)]
    start = time.perf_counter()
    board.write("evaluations", batch)
    return (time.perf_counter() - start) / records * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    views = dict(rundir.VIEWS)
    for batch in (1, 32):
        for label, on in (("view on", views), ("view off", {})):
            rundir.VIEWS.clear()
            rundir.VIEWS.update(on)
            times = [appends(args.records, batch) for _ in range(args.repeats)]
            print(f"append, {batch:2d} per append, {label:8s}: {statistics.median(times):8.1f} us per record")
    rundir.VIEWS.update(views)
    times = [view_alone(args.records * 4) for _ in range(args.repeats)]
    print(f"the view alone: {statistics.median(times):8.1f} us per record")


if __name__ == "__main__":
    main()
