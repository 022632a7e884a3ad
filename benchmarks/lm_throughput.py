"""Language-model child training: tokens/s of TrainEvaluator against a plain PyTorch loop.

Both train the same recurrent child (same seed: same initial weights, dropout masks and
batches) on the same PTB stream with the text recipe (plain SGD, per-step cosine learning rate,
gradient clipping, truncated BPTT with the hidden state carried across windows). The
difference in tokens/s is what the evaluator's machinery costs (the target is <= 5 %). On a
shared machine wall time swings by 2x between rounds, so the process CPU seconds of each whole
run (build, train, validate) are compared too: they move far less with the neighbours' load.

`--cell naive` also times the tree cell as a direct transcription of the paper (one
combination and one activation per leaf, W x_t inside the time loop) in the plain loop: the
gain of the grouped leaves and the hoisted input projection of workers/nets/nasrnn.py.

    python benchmarks/lm_throughput.py --data-path PTB_DIR [--space nasrnn|rnn --arch NAME
        --hidden H --batch-size B --bptt N --steps S --repeats R --threads T --naive]
"""

from __future__ import annotations

import argparse
import math
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from raynas.search_spaces import get_space
from raynas.search_spaces.nasrnn import children
from raynas.workers.datasets import load_dataset
from raynas.workers.evaluation.train import TrainEvaluator
from raynas.workers.nets import NetConfig, build_model
from raynas.workers.ops import RNN_ACTIVATIONS
from raynas.workers.training import TrainConfig


class NaiveTreeCell(nn.Module):
    """The paper's tree, node by node: the yardstick for the grouped cell's speed."""

    def __init__(self, arch, size: int):
        super().__init__()
        self.arch = arch
        self.x_leaves = nn.ModuleList(nn.Linear(size, size, bias=False) for _ in range(arch.base))
        self.h_leaves = nn.ModuleList(nn.Linear(size, size, bias=False) for _ in range(arch.base))

    def init_hidden(self, zeros):
        return zeros, zeros.clone()

    def forward(self, inputs, hidden):
        h, c = hidden
        outputs = []
        for x in inputs:
            h, c = self._step(x, h, c)
            outputs.append(h)
        return torch.stack(outputs), (h, c)

    def _step(self, x, h, c_prev):
        arch, values, memory = self.arch, [], None
        for node, (comb, act) in enumerate(arch.nodes):
            if node < arch.base:
                a, b = self.x_leaves[node](x), self.h_leaves[node](h)
            else:
                a, b = (values[i] for i in children(node, arch.base))
            pre = a + b if comb == "add" else a * b
            if node == arch.memory_from:
                memory = pre
            values.append(RNN_ACTIVATIONS[act](pre))
            if node == arch.inject_at:
                v = values[node] + c_prev if arch.inject[0] == "add" else values[node] * c_prev
                values[node] = RNN_ACTIVATIONS[arch.inject[1]](v)
        return values[-1], memory


def plain_loop(model: nn.Module, data, config: TrainConfig, steps: int) -> tuple[float, float]:
    """The minimal truncated-BPTT loop. Returns (train tokens/s, final validation perplexity)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    train = data.batchify("train", config.batch_size)
    valid = data.batchify("val", config.eval_batch_size)
    starts = range(0, len(train) - 1, config.bptt)[:steps]
    total = config.epochs * len(starts)
    tokens, train_time = 0, 0.0
    for epoch in range(config.epochs):
        model.train()
        hidden = model.init_hidden(config.batch_size)
        t0 = time.perf_counter()
        for step, at in enumerate(starts):
            n = min(config.bptt, len(train) - 1 - at)
            x, y = train[at:at + n], train[at + 1:at + 1 + n]
            hidden = tuple(h.detach() for h in hidden) if isinstance(hidden, tuple) else hidden.detach()
            for group in optimizer.param_groups:
                group["lr"] = 0.5 * config.lr * (1 + math.cos(math.pi * (epoch * len(starts) + step) / total))
            output, hidden = model(x, hidden)
            loss = F.cross_entropy(output.reshape(-1, output.shape[-1]), y.reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            tokens += y.numel()
        train_time += time.perf_counter() - t0
    model.eval()
    with torch.inference_mode():
        hidden, loss = model.init_hidden(valid.shape[1]), 0.0
        for at in range(0, len(valid) - 1, config.bptt):
            n = min(config.bptt, len(valid) - 1 - at)
            output, hidden = model(valid[at:at + n], hidden)
            loss += F.cross_entropy(output.reshape(-1, output.shape[-1]), valid[at + 1:at + 1 + n].reshape(-1),
                                    reduction="sum").item()
    return tokens / train_time, math.exp(loss / ((len(valid) - 1) * valid.shape[1]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-path", help="folder with ptb.train.txt, ptb.valid.txt, ptb.test.txt")
    parser.add_argument("--space", default="nasrnn", help="nasrnn (default) or rnn")
    parser.add_argument("--arch", default=None, help="published name or arch string (default: NAS / DARTS_V2)")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--bptt", type=int, default=35)
    parser.add_argument("--steps", type=int, default=40, help="training windows per epoch")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--naive", action="store_true", help="also time the node-by-node tree cell (nasrnn)")
    args = parser.parse_args(argv)
    if not args.data_path:
        parser.error("--data-path is required")
    print("command: " + shlex.join([Path(sys.executable).name, *sys.argv]))
    torch.set_num_threads(args.threads)
    space = get_space(args.space)
    arch = space.parse(args.arch or {"nasrnn": "NAS", "rnn": "DARTS_V2"}[args.space])
    # Validation on the first 20k tokens keeps the rounds short; training reads only `steps` windows.
    data = load_dataset("ptb", args.data_path)
    data = type(data)(name=data.name, vocab=data.vocab, train=data.train, val=data.val[:20_000], test=data.test)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, bptt=args.bptt, channels=args.hidden,
                         max_train_batches_per_epoch=args.steps, num_threads=args.threads, device="cpu",
                         eval_batch_size=64)
    evaluator = TrainEvaluator(space, data, config)
    resolved = evaluator.config
    net = NetConfig(vocab_size=data.vocab_size, channels=args.hidden)
    print(f"child: {args.space} {arch} H={args.hidden}; batch {args.batch_size} x bptt {args.bptt}, "
          f"{args.steps} windows x {args.epochs} epoch(s); {args.threads} thread(s), torch {torch.__version__}")

    def plain(naive: bool) -> tuple[float, float]:
        torch.manual_seed(args.seed)
        model = build_model(args.space, arch, net)
        if naive:
            model.cell = NaiveTreeCell(arch, args.hidden)
        return plain_loop(model, data, resolved, args.steps)

    def ours() -> tuple[float, float]:
        result = evaluator.evaluate(arch, seed=args.seed)
        assert result.ok, result.reason
        return result.metrics["tokens_per_s"], result.metrics["val_curve"][-1]

    runs = {"plain PyTorch loop": lambda: plain(False), "TrainEvaluator": ours}
    if args.naive:
        runs["plain loop, naive cell"] = lambda: plain(True)
    rows: dict[str, list[tuple[float, float, float]]] = {k: [] for k in runs}
    for repeat in range(args.repeats + 1):  # the first round warms up and is discarded
        round_ = {}
        for name, run in runs.items():
            cpu = time.process_time()
            tokens_per_s, ppl = run()
            round_[name] = (tokens_per_s, time.process_time() - cpu, ppl)
        print(f"  round {repeat}{' (warm-up)' if not repeat else ''}: " +
              " | ".join(f"{k} {v[0]:6.0f} tok/s {v[1]:5.2f} CPU s ppl {v[2]:.1f}" for k, v in round_.items()))
        if repeat:
            for k, v in round_.items():
                rows[k].append(v)
    medians = {k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v)) for k, v in rows.items()}
    print(f"median of {args.repeats} rounds            train tokens/s   run CPU s")
    for k, (tps, cpu) in medians.items():
        print(f"  {k:<24} {tps:14.0f} {cpu:11.2f}")
    (base, base_cpu), (ev, ev_cpu) = medians["plain PyTorch loop"], medians["TrainEvaluator"]
    print(f"overhead: {(1 - ev / base) * 100:.1f} % in train tokens/s (wall), {(ev_cpu / base_cpu - 1) * 100:.1f} % "
          "in run CPU seconds (target <= 5 %)")
    if args.naive:
        naive_tps, naive_cpu = medians["plain loop, naive cell"]
        print(f"grouped cell vs naive cell: x{base / naive_tps:.2f} tokens/s, x{naive_cpu / base_cpu:.2f} CPU s")


if __name__ == "__main__":
    main()
