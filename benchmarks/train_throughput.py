"""Training throughput of TrainEvaluator: against a plain PyTorch loop, and each speed switch against fp32.

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
        [--device cpu|cuda] [--no-autocast] [--dataset digits|random32 --images N] [--cutout PX]

On CUDA both loops train as the evaluator's defaults do (autocast, channels-last, cuDNN's
autotuner) unless `--no-autocast` (fp32, the other switches as they are).

`--switches` measures instead what each of the training loop's speed switches (TrainConfig:
autocast, autocast_dtype=fp16, channels_last, pin_memory, cudnn_benchmark) gives on its own
against fp32 with all of them off, and all of them together (the default): train images/s
(median and range over the rounds, interleaved as above) and the peak GPU memory of an
evaluation above what the data and the previous child left allocated. Each evaluation's
metrics say what it ran with (`precision`, ...): on CPU every switch resolves to off, so there
all rows are fp32 and the figures only check the script. `--dataset random32` trains on
CIFAR-sized inputs (3x32x32 random pixels, 10 classes, through the `arrays` dataset); the
accuracies on it are chance, the speed is a CIFAR child's. pin_memory only acts on the copies the
loop makes each step, cutout's squares: give `--cutout 16` (DARTS' CIFAR setting) to measure it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from raynas.search_spaces import get_space
from raynas.workers.datasets import load_dataset
from raynas.workers.evaluation.train import TrainEvaluator
from raynas.workers.nets import NetConfig, build_model
from raynas.workers.training import TrainConfig, resolve_speed

RESNET_CELL = "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|"
OFF = {"autocast": False, "channels_last": False, "pin_memory": False, "cudnn_benchmark": False}
#: Each switch alone against all of them off, and the default (all on).
SWITCHES = {
    "fp32 (all off)": OFF,
    "autocast": {**OFF, "autocast": True},
    "autocast fp16": {**OFF, "autocast": True, "autocast_dtype": "fp16"},
    "channels_last": {**OFF, "channels_last": True},
    "pin_memory": {**OFF, "pin_memory": True},
    "cudnn_benchmark": {**OFF, "cudnn_benchmark": True},
    "all (default)": {},
}


def plain_loop(arch, data, config: TrainConfig, seed: int, device: torch.device) -> tuple[float, float, float]:
    """The minimal loop for the evaluator's recipe. Returns (images/s while training,
    wall seconds for build + train + validate every epoch, final validation accuracy)."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    net = NetConfig(in_channels=data.in_channels, num_classes=data.num_classes, image_size=data.image_size,
                    channels=config.channels, layers=config.layers)
    model = build_model("nb201", arch, net).to(device)
    speed = resolve_speed(config, device, image=True)
    layout = torch.channels_last if speed.channels_last else torch.contiguous_format
    model.to(memory_format=layout)
    autocast = (lambda: torch.autocast(device.type, dtype=speed.dtype)) if speed.dtype else contextlib.nullcontext
    scaler = torch.amp.GradScaler(device.type, enabled=speed.precision == "fp16")
    torch.backends.cudnn.benchmark = speed.cudnn_benchmark
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
            x, y = train_x[idx].contiguous(memory_format=layout), train_y[idx]
            for group in optimizer.param_groups:
                group["lr"] = 0.5 * config.lr * (1 + math.cos(math.pi * (epoch * steps + step) / total))
            with autocast():
                loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            images += len(y)
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_time += time.perf_counter() - t0
        model.eval()
        with torch.inference_mode(), autocast():
            correct = sum(int((model(x.contiguous(memory_format=layout)).argmax(1) == y).sum())
                          for x, y in data.eval_batches("val", 256))
    return images / train_time, time.perf_counter() - start, correct / data.sizes["val"]


def random32(folder: Path, images: int, seed: int):
    """CIFAR-sized data: `images` training and images // 5 validation images of random pixels."""
    rng = np.random.default_rng(seed)
    arrays = {f"{xy}_{split}": (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8) if xy == "x"
                                else rng.integers(0, 10, n, dtype=np.int64))
              for split, n in (("train", images), ("val", max(images // 5, 1))) for xy in "xy"}
    np.savez(folder / "random32.npz", **arrays)
    return load_dataset("arrays", folder / "random32.npz", seed=seed)


def peak_memory(device: torch.device, run):
    """`run()` and the growth of allocated GPU memory at its peak, in MiB (None on CPU)."""
    if device.type != "cuda":
        return run(), None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    result = run()
    return result, (torch.cuda.max_memory_allocated(device) - before) / 2**20


def switches(args: argparse.Namespace, space, arch, data, sizes: dict) -> None:
    """Each speed switch alone and all of them, against all off, through TrainEvaluator."""
    evaluators = {name: TrainEvaluator(space, data, TrainConfig(**sizes, **options))
                  for name, options in SWITCHES.items()}
    rounds: dict[str, list[tuple[float, float | None, float]]] = {name: [] for name in SWITCHES}
    recorded = {}
    for repeat in range(args.repeats + 1):  # the first round warms up (and autotunes) and is discarded
        for name, evaluator in evaluators.items():
            result, peak = peak_memory(evaluator.device, lambda e=evaluator: e.evaluate(arch, seed=args.seed))
            assert result.ok, f"{name}: {result.reason}"
            m = result.metrics
            recorded[name] = {k: m[k] for k in ("precision", "channels_last", "pin_memory", "cudnn_benchmark")}
            if repeat:
                rounds[name].append((m["images_per_s"], peak, m["val_curve"][-1]))
            print(f"  round {repeat}{' (warm-up)' if not repeat else ''}: {name:<16} {m['images_per_s']:8.0f} img/s"
                  f"{'' if peak is None else f', peak {peak:.1f} MiB'}, ran with {ran_with(recorded[name])}")
    base = statistics.median(r[0] for r in rounds["fp32 (all off)"])
    rows = []
    print(f"median of {args.repeats} rounds  train img/s (range)     vs fp32  peak MiB  ran with")
    for name, runs in rounds.items():
        ips = [r[0] for r in runs]
        peaks = [r[1] for r in runs if r[1] is not None]
        rows.append({"setting": name, "images_per_s": statistics.median(ips), "images_per_s_min": min(ips),
                     "images_per_s_max": max(ips), "speedup": statistics.median(ips) / base,
                     "peak_mib": max(peaks) if peaks else None, "val_acc": runs[-1][2], **recorded[name]})
        row = rows[-1]
        print(f"  {name:<16} {row['images_per_s']:9.0f} ({min(ips):.0f}-{max(ips):.0f}) {row['speedup']:7.2f}x "
              f"{'n/a' if row['peak_mib'] is None else format(row['peak_mib'], '.1f'):>9}  {ran_with(recorded[name])}")
    for row in rows:
        print(json.dumps(row))


def ran_with(recorded: dict) -> str:
    """An evaluation's recorded settings in a few words: its precision and the switches that were on."""
    return " + ".join([recorded["precision"], *(k for k, on in recorded.items() if on is True)])


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
    parser.add_argument("--switches", action="store_true",
                        help="each speed switch alone and all together against fp32, instead of the plain loop")
    parser.add_argument("--dataset", default="digits", choices=("digits", "random32"),
                        help="digits (8x8, bundled; default) or random32 (CIFAR-sized random images)")
    parser.add_argument("--images", type=int, default=10_000, help="random32: training images (default 10,000)")
    parser.add_argument("--cutout", type=int, default=0, help="--switches: cutout square (default 0, none)")
    args = parser.parse_args(argv)
    print("command: " + shlex.join([Path(sys.executable).name, *sys.argv]))

    torch.set_num_threads(args.threads)
    space = get_space("nb201")
    arch = space.parse(RESNET_CELL)
    with tempfile.TemporaryDirectory() as folder:
        data = load_dataset("digits") if args.dataset == "digits" else random32(Path(folder), args.images, args.seed)
    sizes = dict(epochs=args.epochs, batch_size=args.batch_size, channels=args.channels, layers=args.layers,
                 num_threads=args.threads, device=args.device)
    if args.switches:
        steps = -(-data.sizes["train"] // args.batch_size) * args.epochs
        print(f"child: nb201 {RESNET_CELL} C={args.channels} N={args.layers}; {args.dataset} "
              f"{data.sizes['train']} train {data.image_size}x{data.image_size}x{data.in_channels}; batch "
              f"{args.batch_size}, {args.epochs} epochs = {steps} steps, cutout {args.cutout}; {args.threads} "
              f"thread(s), {args.device}, torch {torch.__version__}"
              f"{f', {torch.cuda.get_device_name()}' if args.device == 'cuda' else ''}")
        switches(args, space, arch, data, {**sizes, "cutout": args.cutout})
        return
    config = TrainConfig(**sizes, autocast=not args.no_autocast)
    evaluator = TrainEvaluator(space, data, config)
    device = evaluator.device
    data = data.to(device)
    resolved = evaluator.config
    steps = -(-data.sizes["train"] // args.batch_size) * args.epochs
    print(f"child: nb201 {RESNET_CELL} C={args.channels} N={args.layers}; digits "
          f"{data.sizes['train']} train / {data.sizes['val']} val; batch {args.batch_size}, "
          f"{args.epochs} epochs = {steps} steps; {args.threads} thread(s), {device} "
          f"{resolve_speed(resolved, device, image=True).metrics()}, torch {torch.__version__}")

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
