"""Auto-DeepLab on the composed segmentation set (digits-seg): the searched network against
fixed paths of the same size, and the search step's speed and memory.

1. Step: images/s of the search step (alpha and beta on a trainB batch, then the weights on a
   trainA batch: each step reads 2 x batch images; images/s counts the weights' batch) and the
   growth of the process' peak resident memory over the steps (VmHWM, reset through
   /proc/self/clear_refs after the supernet is built); on CUDA the peak allocated memory.
2. Search: `--searches` Auto-DeepLab searches (seeds 0..), each decoded to a cell and a path.
3. Compare, at one training budget (`nas train`'s loop and poly schedule, test mIoU), each
   searched network against networks with the same cell and depth on fixed paths: DeepLab-like
   (down to stride 16 as fast as the trellis allows, then constant) and a random path (drawn
   per search seed); each trained with `--train-seeds` seeds on the whole composed training set.
   Prints one JSON line per run and the mean +- std of each group.

    python benchmarks/autodeeplab.py [--layers 4] [--filters 4] [--epochs 6] [--batch 16]
        [--steps-per-epoch 10] [--max-train 64] [--searches 2] [--train-seeds 2] [--train-epochs 8]
        [--train-lr 0.05] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from raynas.common.threads import torch_threads
from raynas.search_spaces import get_space
from raynas.search_spaces.types import AutoDeepLabArch
from raynas.workers.datasets import load_dataset
from raynas.workers.oneshot import search_epochs
from raynas.workers.oneshot.autodeeplab import AutoDeepLabConfig, AutoDeepLabSupernet, arch_step
from raynas.workers.oneshot.search import weight_optimizer, weight_step
from raynas.workers.profile import process_memory
from raynas.workers.retrain import recipe, retrain
from raynas.workers.training import pick_device


def step_figures(data, args, device: torch.device) -> dict:
    torch.manual_seed(0)
    config = AutoDeepLabConfig(batch_size=args.batch, channels=args.filters, layers=args.layers,
                               device=str(device.type)).resolved("autodeeplab")
    w_half, a_half = data.to(device).halves(0.5)
    model = AutoDeepLabSupernet(args.filters, args.layers, data.in_channels, data.num_classes).to(device)
    w_opt = weight_optimizer(model, config)
    a_opt = torch.optim.Adam(model.arch_parameters(), lr=config.arch_lr, weight_decay=config.arch_weight_decay)
    x, y = next(w_half.eval_batches("train", args.batch))
    xa, ya = next(a_half.eval_batches("train", args.batch))

    def step() -> None:
        arch_step(model, a_opt, a_half, xa, ya)
        weight_step(model, w_opt, config, config.lr, x, y, loss_fn=w_half.loss)

    step()  # first-call set-up out of the figures
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    base = process_memory("VmRSS") if device.type == "cpu" else 0
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else process_memory("VmHWM") - base
    return {"part": "step", "device": str(device), "layers": args.layers, "filters": args.filters, "batch": args.batch,
            "image": [data.raw["height"], data.raw["width"]], "images_per_s": round(args.steps * args.batch / wall, 2),
            "step_s": round(wall / args.steps, 3), "peak_memory_mb": round(peak / 2**20, 1),
            "params": sum(p.numel() for p in model.network_parameters())}


def deeplab_like(layers: int) -> tuple[int, ...]:
    """Down to stride 16 (level 2) one level per layer, then constant: DeepLab's output stride 16."""
    return tuple(min(i + 1, 2) for i in range(layers))


def random_path(layers: int, seed: int) -> tuple[int, ...]:
    return get_space("autodeeplab", layers=layers).sample(np.random.default_rng(1000 + seed)).path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--filters", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=6, help="search epochs (alpha and beta from half of them)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps-per-epoch", type=int, default=10)
    parser.add_argument("--max-train", type=int, default=64,
                        help="training canvases the search keeps (it halves them with the validation canvases)")
    parser.add_argument("--searches", type=int, default=2)
    parser.add_argument("--train-seeds", type=int, default=2)
    parser.add_argument("--train-epochs", type=int, default=8)
    parser.add_argument("--train-lr", type=float, default=0.05)
    parser.add_argument("--steps", type=int, default=5, help="timed search steps")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--step-only", action="store_true", help="only the step figures")
    args = parser.parse_args()
    device = pick_device(args.device)
    # The search reads the kept training canvases (halved); the comparison trains on all of them.
    data = load_dataset("digits-seg", max_train=args.max_train, val_fraction=0.1)
    full = load_dataset("digits-seg", val_fraction=0.1)
    with torch_threads(args.threads):
        print(json.dumps(step_figures(data, args, device)), flush=True)
        if args.step_only:
            return
        space = get_space("autodeeplab", layers=args.layers)
        config = AutoDeepLabConfig(epochs=args.epochs, batch_size=args.batch, channels=args.filters,
                                   layers=args.layers, max_batches_per_epoch=args.steps_per_epoch, device=args.device)
        groups: dict[str, list[float]] = {"searched": [], "deeplab-like": [], "random": []}
        train = recipe("autodeeplab", "digits-seg", epochs=args.train_epochs, batch_size=32, channels=args.filters,
                       lr=args.train_lr, device=args.device)
        with tempfile.TemporaryDirectory() as tmp:
            for s in range(args.searches):
                start = time.perf_counter()
                last = list(search_epochs(space, data, config, seed=s))[-1]
                searched = space.parse(last["genotype"])
                print(json.dumps({"part": "search", "seed": s, "search_s": round(time.perf_counter() - start, 1),
                                  "path": last["path"], "val_miou": round(last["val_miou"], 4),
                                  "beta_entropy_fraction": round(last["beta_entropy_fraction"], 4),
                                  "genotype": last["genotype"]}), flush=True)
                archs = {"searched": searched,
                         "deeplab-like": AutoDeepLabArch(searched.cell, deeplab_like(args.layers)),
                         "random": AutoDeepLabArch(searched.cell, random_path(args.layers, s))}
                for group, arch in archs.items():
                    for t in range(args.train_seeds):
                        out = Path(tmp, f"{s}-{group}-{t}")
                        result = retrain("autodeeplab", str(arch), full, train, out, seed=t, log=lambda _: None)
                        groups[group].append(result["test_acc"])
                        print(json.dumps({"part": "train", "search_seed": s, "group": group, "train_seed": t,
                                          "path": list(arch.path), "params": result["params"],
                                          "test_miou": round(result["test_acc"], 4),
                                          "train_s": round(result["train_time_s"], 1)}), flush=True)
    summary = {group: {"test_miou_mean": round(statistics.fmean(v), 4),
                       "test_miou_std": round(statistics.stdev(v), 4) if len(v) > 1 else 0.0, "runs": len(v)}
               for group, v in groups.items()}
    print(json.dumps({"part": "summary", **summary}), flush=True)


if __name__ == "__main__":
    main()
