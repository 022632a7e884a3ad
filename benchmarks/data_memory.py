"""A worker's peak memory while it trains a child on an image folder of 5,000 and of 50,000 images:
held in memory (what `stream: auto` picks for the small one) and streamed from disk (what it picks
for the large one), so that the figures show whether memory grows with the set.

The folders are written first (PNG files, `--source`'s images, with a random crop-and-shift per
copy so that no two files are the same bytes). Each measurement runs in a process of its own
that does what a Ray worker does for one child: build the plan's evaluator (list the folder,
normalisation statistics, the data in memory or its file list) and evaluate one child for one
epoch. The figures are that process' peak resident memory (VmHWM) and the largest peak among its
DataLoader processes (decoding when streamed), and the wall time.

    python benchmarks/data_memory.py [--sizes 5000 50000] [--source tests/data/cifar10_600.npz]
        [--root /tmp/raynas-folders] [--batches 40] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CHILD = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"


def write_folder(root: Path, size: int, source: Path) -> Path:
    """`size` images in `root`, a class folder each (a split layout: train/ and test/), once."""
    from PIL import Image

    done = root / f".done-{size}"
    if done.exists():
        return root
    with np.load(source, allow_pickle=False) as archive:
        x, y = archive["x_train"], archive["y_train"]
        names = [str(c) for c in archive["class_names"]]
    rng = np.random.default_rng(size)
    padded = np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="reflect")
    for i in range(size):
        k = i % len(x)
        dy, dx = rng.integers(0, 9, size=2)
        image = padded[k, dy:dy + 32, dx:dx + 32]
        split = "test" if i % 10 == 0 else "train"
        folder = root / split / names[y[k]]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:06d}.png")
    done.touch()
    return root


def measure(folder: Path, stream: str, batches: int) -> dict:
    """One worker's child on `folder`, in a fresh process: its figures."""
    code = f"""
import json, resource, sys, time
from raynas.controller.runtime.plan import resolve
from raynas.controller.runtime.spec import SearchSpec
from raynas.workers.profile import process_memory
start = time.perf_counter()
plan = resolve(SearchSpec(space="nb201", strategy="random", dataset="image-folder", data_path={str(folder)!r},
                          dataset_options={{"stream": {stream!r}, "loader_workers": 2}}, runtime="local",
                          evaluator_options={{"epochs": 1, "channels": 8, "layers": 1, "batch_size": 64,
                                             "max_train_batches_per_epoch": {batches}, "num_threads": 1}}))
evaluator = plan.make_evaluator()
built = time.perf_counter() - start
result = evaluator.evaluate({CHILD!r}, seed=0)
assert result.ok, result.reason
print(json.dumps({{"stored": evaluator.dataset.info()["stored"], "sizes": evaluator.dataset.sizes,
                  "peak_mib": process_memory("VmHWM") / 2**20,
                  "loader_peak_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                  "build_s": built, "wall_s": time.perf_counter() - start, "val_acc": result.reward}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000])
    parser.add_argument("--source", type=Path, default=HERE.parent / "tests" / "data" / "cifar10_600.npz",
                        help="an .npz with x_train (N, 32, 32, 3) uint8, y_train and class_names")
    parser.add_argument("--root", type=Path, default=Path("/tmp/raynas-folders"))
    parser.add_argument("--batches", type=int, default=40, help="training batches of the child (64 images each)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    for size in args.sizes:
        start = time.perf_counter()
        folder = write_folder(args.root / str(size), size, args.source)
        written = time.perf_counter() - start
        for stream in ("memory", "disk"):
            rows.append({"images": size, "stream": stream, "written_s": round(written, 1),
                         **measure(folder, stream, args.batches)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'images':>7} {'stream':>7} {'stored':>7} {'worker peak MiB':>16} {'loader peak MiB':>16} "
          f"{'build s':>8} {'wall s':>7}")
    for r in rows:
        print(f"{r['images']:>7} {r['stream']:>7} {r['stored']:>7} {r['peak_mib']:>16.0f} "
              f"{r['loader_peak_mib']:>16.0f} {r['build_s']:>8.1f} {r['wall_s']:>7.1f}")


if __name__ == "__main__":
    main()
