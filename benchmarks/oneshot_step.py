"""Images/s of one DARTS search step (the architecture step, then the weight step with
clipping) on the full-size search supernet (C=16, 8 cells, 32x32x3 inputs, 10 classes,
random data), first and second order; optionally side by side with quark0/darts' search
model (model_search.Network + architect.Architect) on the same machine.

    python benchmarks/oneshot_step.py [--batch N] [--steps 2] [--rounds 3] [--threads T]
        [--device auto] [--reference /tmp/quark0-darts/cnn]

`--reference` is a copy of quark0/darts' cnn/ OUTSIDE this repository. It is PyTorch 0.3
code; the copy needs its `add_(scalar, tensor)`-style calls rewritten with `alpha=` and, on
a machine without CUDA, its `.cuda()` calls removed (docs/benchmarks.md has the commands).

Ours and quark0's alternate round by round (`--rounds`), so that a change in the load of a
shared machine hits both; each figure is the median over rounds. Images/s counts the
training batch of each step (each step also reads a validation batch of the same size, in
both). `cpu_images_per_s` divides by the process' CPU time instead of wall time: on a
loaded machine it is the steadier figure. With CUDA, the peak GPU memory of our steps at
batch 64 is measured as well.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from raynas.common.threads import torch_threads
from raynas.workers.oneshot import Architect, DartsSupernet, OneShotConfig
from raynas.workers.training import pick_device

LR, MOMENTUM, WD, CLIP = 0.025, 0.9, 3e-4, 5.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def ours(order: int, device: torch.device):
    model = DartsSupernet(16, 8).to(device).channels_last()  # as search_epochs runs it
    config = OneShotConfig(second_order=order == 2).resolved("darts")
    w_opt = torch.optim.SGD(model.network_parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    architect = Architect(model, config)

    def step(x, y, xv, yv):
        architect.step(x, y, xv, yv, LR, w_opt)
        w_opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward(inputs=model.network_parameters())
        torch.nn.utils.clip_grad_norm_(model.network_parameters(), CLIP)
        w_opt.step()
    return step


def reference(order: int, device: torch.device, path: str):
    if path not in sys.path:
        sys.path.insert(0, path)
    from architect import Architect as RefArchitect  # quark0/darts, outside the repo
    from model_search import Network

    model = Network(16, 10, 8, torch.nn.CrossEntropyLoss()).to(device)
    w_opt = torch.optim.SGD(model.parameters(), LR, momentum=MOMENTUM, weight_decay=WD)
    args = SimpleNamespace(momentum=MOMENTUM, weight_decay=WD, arch_learning_rate=3e-4, arch_weight_decay=1e-3)
    architect = RefArchitect(model, args)

    def step(x, y, xv, yv):
        architect.step(x, y, xv, yv, LR, w_opt, unrolled=order == 2)
        w_opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        w_opt.step()
    return step


def time_steps(step, batch, steps: int, device: torch.device) -> tuple[float, float]:
    """(images per wall second, images per CPU second) over `steps` steps."""
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step(*batch)
    _sync(device)
    images = steps * batch[0].shape[0]
    return images / (time.perf_counter() - wall), images / (time.process_time() - cpu)


def random_batch(size: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    def images():
        return torch.randn(size, 3, 32, 32, device=device)

    def labels():
        return torch.randint(0, 10, (size,), device=device)
    return images(), labels(), images(), labels()


def peak_gpu_gib(order: int, device: torch.device, batch_size: int = 64) -> float:
    step = ours(order, device)
    batch = random_batch(batch_size, device)
    step(*batch)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step(*batch)
    torch.cuda.synchronize()
    return round(torch.cuda.max_memory_allocated() / 2**30, 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, help="default 64 on CUDA, 16 on CPU (a CPU step at 64 takes minutes)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--reference", help="quark0/darts cnn/ directory (a copy outside this repository)")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    batch_size = args.batch or (64 if device.type == "cuda" else 16)
    torch.manual_seed(0)
    batch = random_batch(batch_size, device)
    out = {"command": "python benchmarks/oneshot_step.py " + shlex.join(sys.argv[1:] if argv is None else argv),
           "device": str(device), "batch": batch_size}
    with torch_threads(args.threads):
        out["threads"] = torch.get_num_threads()
        for order in (1, 2):
            makers = {"ours": ours}
            if args.reference:
                makers["quark0"] = lambda o, d: reference(o, d, args.reference)
            steps = {name: make(order, device) for name, make in makers.items()}
            for step in steps.values():
                step(*batch)  # warm-up: allocator, oneDNN/cuDNN kernel choice
            figures: dict[str, list[tuple[float, float]]] = {name: [] for name in steps}
            for _ in range(args.rounds):
                for name, step in steps.items():
                    figures[name].append(time_steps(step, batch, args.steps, device))
            for name, runs in figures.items():
                out[f"{name}_order{order}_images_per_s"] = round(statistics.median(w for w, _ in runs), 2)
                out[f"{name}_order{order}_cpu_images_per_s"] = round(statistics.median(c for _, c in runs), 2)
            if args.reference:
                for kind in ("images_per_s", "cpu_images_per_s"):
                    out[f"speedup_order{order}_{kind}"] = round(
                        out[f"ours_order{order}_{kind}"] / out[f"quark0_order{order}_{kind}"], 2)
            if device.type == "cuda":
                out[f"ours_order{order}_peak_gib_batch64"] = peak_gpu_gib(order, device)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
