"""Images/s of one DARTS search step (the architecture step, then the weight step) on the
full-size search supernet (C=16, 8 cells, 32x32x3 inputs, 10 classes), first and second
order; optionally side by side with quark0/darts' search model on the same machine.

    python benchmarks/oneshot_step.py [--batch 64] [--steps 5] [--device auto]
        [--reference /tmp/quark0-darts/cnn]   # a copy of quark0/darts' cnn/ OUTSIDE the repo

The reference is PyTorch 0.3 code: its copy needs `.cuda()` calls removed on a CPU machine and
the old `add_(scalar, tensor)` calls rewritten (see docs/benchmarks.md). Images/s counts the
training batch of each step (each step also reads a validation batch of the same size, in both).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from workers.oneshot import Architect, DartsSupernet, OneShotConfig
from workers.train import pick_device

LR, MOMENTUM, WD = 0.025, 0.9, 3e-4


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(step, batch, steps: int, device: torch.device) -> float:
    step(*batch)  # warm-up: allocator, cuDNN autotuning
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(*batch)
    _sync(device)
    return steps * batch[0].shape[0] / (time.perf_counter() - start)


def ours(order: int, device: torch.device):
    model = DartsSupernet(16, 8).to(device).channels_last()  # as search_epochs runs it
    config = OneShotConfig(algorithm="darts2" if order == 2 else "darts").resolved("darts")
    w_opt = torch.optim.SGD(model.network_parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    architect = Architect(model, config)

    def step(x, y, xv, yv):
        architect.step(x, y, xv, yv, LR, w_opt)
        w_opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward(inputs=model.network_parameters())
        torch.nn.utils.clip_grad_norm_(model.network_parameters(), 5.0)
        w_opt.step()
    return step


def reference(order: int, device: torch.device, path: str):
    sys.path.insert(0, path)
    from architect import Architect as RefArchitect  # noqa: E402  (quark0/darts, outside the repo)
    from model_search import Network

    model = Network(16, 10, 8, torch.nn.CrossEntropyLoss()).to(device)
    w_opt = torch.optim.SGD(model.parameters(), LR, momentum=MOMENTUM, weight_decay=WD)
    args = SimpleNamespace(momentum=MOMENTUM, weight_decay=WD, arch_learning_rate=3e-4, arch_weight_decay=1e-3)
    architect = RefArchitect(model, args)

    def step(x, y, xv, yv):
        architect.step(x, y, xv, yv, LR, w_opt, unrolled=order == 2)
        w_opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        w_opt.step()
    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--reference", help="quark0/darts cnn/ directory (a copy outside this repository)")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    torch.manual_seed(0)
    batch = (torch.randn(args.batch, 3, 32, 32, device=device), torch.randint(0, 10, (args.batch,), device=device),
             torch.randn(args.batch, 3, 32, 32, device=device), torch.randint(0, 10, (args.batch,), device=device))
    out = {"command": "python benchmarks/oneshot_step.py " + shlex.join(sys.argv[1:] if argv is None else argv),
           "device": str(device), "threads": torch.get_num_threads(), "batch": args.batch}
    for order in (1, 2):
        impls = {"ours": ours}
        if args.reference:
            impls["quark0"] = lambda o, d: reference(o, d, args.reference)
        for name, make in impls.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            out[f"{name}_order{order}_images_per_s"] = round(time_steps(make(order, device), batch, args.steps,
                                                                        device), 2)
            if device.type == "cuda":
                out[f"{name}_order{order}_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if args.reference:
            out[f"speedup_order{order}"] = round(out[f"ours_order{order}_images_per_s"]
                                                 / out[f"quark0_order{order}_images_per_s"], 2)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
