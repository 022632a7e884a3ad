"""Search-step images/s and peak memory of each one-shot strategy, beside one child network:
DARTS first and second order and NoisyDARTS step the whole supernet (the alphas' step, then the
weights'), RS-WS steps one sampled architecture's path through it, and `child` trains the largest
cell of the space as a stand-alone network (NB201: every edge nor_conv_3x3; DARTS: DARTS_V2).

Each strategy runs in a process of its own, so its peak is its own: the figure is the growth of
the process' peak resident memory (VmHWM) over its resident memory once the model, optimizer and
data were built, i.e. what the steps themselves need (activations kept for backward, gradients,
optimizer state). On CUDA the peak allocated GPU memory is measured instead. Images/s counts the
weights' batch of each step (the DARTS family also reads an architecture batch of the same size).

    python benchmarks/oneshot_memory.py [--space nb201] [--batch 64] [--steps 3] [--channels C]
        [--layers N] [--threads T] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from raynas.common.threads import torch_threads
from raynas.search_spaces import get_space
from raynas.workers.nets import NetConfig, build_model
from raynas.workers.oneshot import Architect, RSWSConfig, search_config, supernet_for
from raynas.workers.oneshot.search import weight_optimizer, weight_step
from raynas.workers.profile import process_memory
from raynas.workers.training import pick_device

STRATEGIES = ("darts", "darts2", "noisy-darts", "rsws", "child")
LARGEST_CHILD = {"nb201": "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|"
                          "nor_conv_3x3~2|", "darts": "DARTS_V2"}


def _step(strategy: str, space: str, args: argparse.Namespace, device: torch.device):
    """The strategy's search step as its search loop runs it, and its network's parameter count."""
    if strategy == "child":
        # The width and depth of RS-WS' supernet, whose paths are children like this one.
        sizes = RSWSConfig(channels=args.channels, layers=args.layers).resolved(space)
        net = NetConfig(channels=sizes.channels, layers=sizes.layers)
        model = build_model(space, get_space(space).parse(LARGEST_CHILD[space]), net).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)

        def child(x, y, xa, ya):
            optimizer.zero_grad(set_to_none=True)
            out = model(x)
            F.cross_entropy(out[0] if isinstance(out, tuple) else out, y).backward()
            optimizer.step()
        return child, model
    cfg = search_config(strategy)(channels=args.channels, layers=args.layers).resolved(space)
    entry = supernet_for(space)
    model = entry.build(get_space(space), cfg, SimpleNamespace(in_channels=3, num_classes=10)).to(device)
    optimizer = weight_optimizer(model, cfg)
    if strategy == "rsws":
        generator = torch.Generator().manual_seed(0)

        def rsws(x, y, xa, ya):
            path = entry.path(entry.sample(get_space(space), generator), model.primitives)
            weight_step(model, optimizer, cfg, cfg.lr, x, y, path)
        return rsws, model
    architect = Architect(model, cfg)

    def darts(x, y, xa, ya):
        architect.step(x, y, xa, ya, cfg.lr, optimizer)
        weight_step(model, optimizer, cfg, cfg.lr, x, y)
    return darts, model


def measure(strategy: str, args: argparse.Namespace) -> dict:
    device = pick_device(args.device)
    torch.manual_seed(0)
    with torch_threads(args.threads):
        step, model = _step(strategy, args.space, args, device)
        batch = [torch.randn(args.batch, 3, 32, 32, device=device), torch.randint(0, 10, (args.batch,), device=device),
                 torch.randn(args.batch, 3, 32, 32, device=device), torch.randint(0, 10, (args.batch,), device=device)]
        params = sum(p.numel() for n, p in model.named_parameters() if "alphas" not in n)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            base = process_memory("VmRSS")
        step(*batch)  # the first step: optimizer state, allocator growth
        start = time.perf_counter()
        for _ in range(args.steps):
            step(*batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = process_memory("VmHWM")
        wall = time.perf_counter() - start
    return {"strategy": strategy, "params": params, "images_per_s": round(args.steps * args.batch / wall, 2),
            "peak_step_mib": round((peak - base) / 2**20, 1), "memory": "gpu" if device.type == "cuda" else "rss"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="nb201", choices=("nb201", "darts"))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3, help="timed steps, after one untimed")
    parser.add_argument("--channels", type=int, help="supernet and child width (default: each search's own)")
    parser.add_argument("--layers", type=int, help="supernet and child depth (default: each search's own)")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the measuring child process
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, args)))
        return 0
    out = {"command": "python benchmarks/oneshot_memory.py " + shlex.join(sys.argv[1:] if argv is None else argv)}
    own = list(sys.argv[1:] if argv is None else argv)
    for strategy in args.strategies.split(","):
        done = subprocess.run([sys.executable, __file__, *own, "--one", strategy], capture_output=True, text=True,
                              check=True)
        out[strategy] = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
