"""Training throughput of TrainEvaluator against a plain PyTorch loop.

Both train the same NB201 child (same seed, so the same initial weights) on the
same digits tensors with the same recipe (Nesterov SGD, weight decay, per-step
cosine learning rate, gradient clipping), batch size and number of steps. The
difference in images/s is what the evaluator's machinery costs: its batch
iterator, loss bookkeeping, NaN check and timing. The target is <= 5 %.

Runs alternate between the two (after one warm-up round) and the medians over
`--repeats` rounds are compared, so a noisy neighbour on the machine hurts both
alike; the process CPU time of each whole run is printed too, as it is less
sensitive to other processes than wall time. Both runs start from the same
weights and see the same batches, so their final validation accuracies agree.

    python benchmarks/train_throughput.py [--epochs N --repeats R --channels C --layers L --threads T]
        [--device cpu|cuda] [--no-autocast]

On CUDA both loops run the forward pass under bf16 autocast unless `--no-autocast`.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from raynas.search_spaces import get_space
from raynas.workers.datasets import load_dataset
from raynas.workers.evaluation.train import TrainEvaluator
from raynas.workers.nets import NetConfig, build_model
from raynas.workers.training import TrainConfig

RESNET_CELL = "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|"


def plain_loop(arch, data, config: TrainConfig, seed: int, device: torch.device) -> tuple[float, float, float]:
    """The minimal loop for the evaluator's recipe. Returns (images/s while training,
    wall seconds for build + train + validate every epoch, final validation accuracy)."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    net = NetConfig(in_channels=data.in_channels, num_classes=data.num_classes, image_size=data.image_size,
                    channels=config.channels, layers=config.layers)
    model = build_model("nb201", arch, net).to(device)
    bf16 = device.type == "cuda" and config.autocast
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, nesterov=True,
                                weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    train_x, train_y = data.to(device).tensors("train")
    n, bs = len(train_y), config.batch_size
    steps = -(-n // bs)
    total = config.epochs * steps
    train_time, images = 0.0, 0
    for epoch in range(config.epochs):
        model.train()
        t0 = time.perf_counter()
        order = torch.randperm(n, generator=generator).to(device)
        for step in range(steps):
            idx = order[step * bs:(step + 1) * bs]
            x, y = train_x[idx], train_y[idx]
            for group in optimizer.param_groups:
                group["lr"] = 0.5 * config.lr * (1 + math.cos(math.pi * (epoch * steps + step) / total))
            with autocast():
                loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            images += len(y)
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_time += time.perf_counter() - t0
        model.eval()
        with torch.inference_mode(), autocast():
            correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in data.eval_batches("val", 256))
    return images / train_time, time.perf_counter() - start, correct / data.sizes["val"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--channels", type=int, default=16, help="NB201 C (default 16, the benchmark's)")
    parser.add_argument("--layers", type=int, default=5, help="NB201 cells per stage N (default 5)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both loops")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--no-autocast", action="store_true", help="fp32 on CUDA too")
    args = parser.parse_args(argv)
    print("command: " + shlex.join([Path(sys.executable).name, *sys.argv]))

    torch.set_num_threads(args.threads)
    space = get_space("nb201")
    arch = space.parse(RESNET_CELL)
    data = load_dataset("digits")
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, channels=args.channels,
                         layers=args.layers, num_threads=args.threads, device=args.device,
                         autocast=not args.no_autocast)
    evaluator = TrainEvaluator(space, data, config)
    device = evaluator.device
    data = data.to(device)
    resolved = evaluator.config
    steps = -(-data.sizes["train"] // args.batch_size) * args.epochs
    print(f"child: nb201 {RESNET_CELL} C={args.channels} N={args.layers}; digits "
          f"{data.sizes['train']} train / {data.sizes['val']} val; batch {args.batch_size}, "
          f"{args.epochs} epochs = {steps} steps; {args.threads} thread(s), {device}"
          f"{' bf16 autocast' if device.type == 'cuda' and config.autocast else ''}, torch {torch.__version__}")

    plain, ours = [], []
    for repeat in range(args.repeats + 1):  # the first round warms up both and is discarded
        cpu = time.process_time()
        ips, wall, acc = plain_loop(arch, data, resolved, args.seed, device)
        p = (ips, wall, time.process_time() - cpu, acc)
        cpu = time.process_time()
        result = evaluator.evaluate(arch, seed=args.seed)
        assert result.ok, result.reason
        m = result.metrics
        e = (m["images_per_s"], m["wall_time_s"], time.process_time() - cpu, m["val_curve"][-1])
        if repeat:
            plain.append(p)
            ours.append(e)
        else:
            print(f"  params {m['params']:,}, FLOPs {m['flops']:,} per image")
        print(f"  round {repeat}{' (warm-up)' if not repeat else ''}: "
              f"plain {p[0]:6.0f} img/s {p[1]:5.2f} s val acc {p[3]:.4f} | "
              f"TrainEvaluator {e[0]:6.0f} img/s {e[1]:5.2f} s val acc {e[3]:.4f}")

    medians = {name: tuple(statistics.median(column) for column in zip(*runs))
               for name, runs in (("plain PyTorch loop", plain), ("TrainEvaluator", ours))}
    base, ev = medians.values()
    overhead = (1 - ev[0] / base[0]) * 100
    print(f"median of {args.repeats} rounds     train img/s   run wall s   run CPU s   final val acc")
    for name, (ips, wall, cpu, acc) in medians.items():
        print(f"  {name:<20} {ips:11.0f} {wall:12.2f} {cpu:11.2f} {acc:15.4f}")
    wall_over, cpu_over = (ev[1] / base[1] - 1) * 100, (ev[2] / base[2] - 1) * 100
    print(f"  {'overhead':<20} {overhead:9.1f} % {wall_over:10.1f} % {cpu_over:9.1f} %")
    print(f"training throughput overhead {overhead:.1f} % (target <= 5 %: {'met' if overhead <= 5 else 'NOT met'}); "
          "a run also builds the child, counts its FLOPs and validates every epoch")


if __name__ == "__main__":
    main()
