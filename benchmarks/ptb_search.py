"""A small Penn Treebank search against random search at the same budget, over seeds.

Each strategy proposes `--budget` tree cells (nasrnn, base 8) or DARTS cells (rnn), one
child at a time; every child is a small language model trained briefly on the PTB training
stream and scored by Zoph & Le's reward 80 / ppl^2 of its validation perplexity (on the first
`--val-tokens` of the validation stream, to keep a child to seconds). The figure is the best
validation perplexity found, per strategy and seed, and its mean.

    python benchmarks/ptb_search.py --data-path PTB_DIR [--space nasrnn --strategies rl,random
        --budget 16 --seeds 3 --hidden 32 --windows 20 --batch-size 32 --val-tokens 20000]
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from raynas.controller.strategies import get_strategy
from raynas.search_spaces import get_space
from raynas.workers.datasets import load_dataset
from raynas.workers.evaluation.train import TrainEvaluator
from raynas.workers.training import TrainConfig


def search(strategy: str, space, evaluator: TrainEvaluator, budget: int, seed: int, batch: int) -> list[float]:
    """The validation perplexities of the `budget` children, in the order they were evaluated."""
    options = {"batch_size": batch} if strategy == "rl" else {}
    proposer = get_strategy(strategy, space, seed=seed, **options)
    curve: list[float] = []
    while len(curve) < budget:
        for arch in proposer.propose(min(batch, budget - len(curve))):
            result = evaluator.evaluate(arch, seed=seed)
            proposer.observe(arch, result)
            curve.append(result.metrics["val_ppl_best"] if result.ok else float("inf"))
    return curve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-path", help="folder with ptb.train.txt, ptb.valid.txt, ptb.test.txt")
    parser.add_argument("--space", default="nasrnn", help="nasrnn (default) or rnn")
    parser.add_argument("--strategies", default="rl,random")
    parser.add_argument("--budget", type=int, default=16, help="children per search")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rl-batch", type=int, default=4, help="children per controller update (rl)")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--windows", type=int, default=20, help="training windows per child")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--val-tokens", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if not args.data_path:
        parser.error("--data-path is required")
    print("command: " + shlex.join([Path(sys.executable).name, *sys.argv]))
    torch.set_num_threads(args.threads)
    data = load_dataset("ptb", args.data_path)
    data = type(data)(name=data.name, vocab=data.vocab, train=data.train, val=data.val[:args.val_tokens],
                      test=data.test)
    space = get_space(args.space)
    config = TrainConfig(epochs=1, batch_size=args.batch_size, channels=args.hidden, eval_batch_size=32,
                         max_train_batches_per_epoch=args.windows, num_threads=args.threads, device="cpu")
    evaluator = TrainEvaluator(space, data, config)
    print(f"{args.space}: {args.budget} children per search, H={args.hidden}, {args.windows} windows of "
          f"{args.batch_size} x 35 tokens each, validation on {args.val_tokens} tokens; seeds 0..{args.seeds - 1}")
    best: dict[str, list[float]] = {}
    for strategy in args.strategies.split(","):
        for seed in range(args.seeds):
            start = time.perf_counter()
            curve = search(strategy, space, evaluator, args.budget, seed, args.rl_batch)
            best.setdefault(strategy, []).append(min(curve))
            print(f"  {strategy:<8} seed {seed}: best val ppl {min(curve):8.2f}  "
                  f"(first half {min(curve[:len(curve) // 2]):.2f}, second half {min(curve[len(curve) // 2:]):.2f}; "
                  f"{time.perf_counter() - start:.0f} s)")
    for strategy, values in best.items():
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"{strategy:<8} best validation perplexity {statistics.mean(values):8.2f} +- {spread:.2f} "
              f"over {len(values)} seeds")


if __name__ == "__main__":
    main()
