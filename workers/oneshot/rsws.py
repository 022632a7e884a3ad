"""Random search with weight sharing (Li & Talwalkar, "Random Search and Reproducibility for
Neural Architecture Search", UAI 2019), on the darts and nb201 supernets.

Its stages, as in the paper:
1. train the shared weights, one architecture sampled uniformly per minibatch; only that
   architecture's ops run (a single path through the supernet, so a step needs the memory
   of one child, not of the supernet);
2. rank: sample `archs` architectures, score each by its accuracy with the shared weights on
   `score_batches` minibatches of the architecture half, and re-score the `rescore_top` best
   of every `block` on that whole half; each block's best is a winner;
3. the best `candidates` winners go to the ordinary evaluator (the spec's: the NB201 table, or
   training from scratch), which scores them as it scores any child.

Settings (the paper's CIFAR-10 search and liamcli/randomNAS_release): darts space: 150 epochs,
C=24, 8 cells, batch 64, SGD 0.025 cosine (per epoch) to 0.001, momentum 0.9, wd 3e-4, clip 1;
5000 architectures on 10 minibatches, the top 10 of each 1000 re-scored; `none` is sampled like
any op, and each node of a DARTS cell reads two distinct inputs. nb201 space: AutoDL-Projects'
RANDOM config (250 epochs, Nesterov, wd 5e-4, cosine per iteration) on the C=16, N=5 supernet,
with the same ranking. Minibatch scores come from the architecture half as its batches come
(shuffled, augmented: the reference's validation queue shares the training transform), in eval
mode with the supernet's running BN statistics; the full re-scoring reads that half un-augmented.

Reports: one per training epoch (`stage` train) and one per ranking block (`stage` rank, with
the best architecture so far); the last names the `candidates`. With a checkpoint file the
search saves its state after every training epoch and every ranking block and continues from
there.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from raynas.common import ConfigError, check_int
from raynas.common.options import option
from raynas.common.threads import torch_threads
from raynas.search_spaces import SearchSpace
from raynas.search_spaces.cell import PRIMITIVES
from raynas.search_spaces.nb201 import NB201_OPS, NB201Arch
from raynas.search_spaces.types import Genotype
from raynas.workers.datasets import Data
from raynas.workers.datasets.images import ImageData
from raynas.workers.evaluation import Evaluator
from raynas.workers.oneshot.derive import single_path, skip_count
from raynas.workers.oneshot.evaluator import OneShotSearch
from raynas.workers.oneshot.rnn import rnn_rsws_epochs
from raynas.workers.oneshot.search import (
    SupernetConfig,
    check_search,
    cosine_lr,
    endless,
    evaluate,
    load_checkpoint,
    own_rng,
    save_checkpoint,
    steps_per_epoch,
    weight_optimizer,
    weight_step,
)
from raynas.workers.oneshot.supernet import Supernet, build_supernet
from raynas.workers.training import pick_device

#: Li & Talwalkar's CIFAR-10 search (darts) and AutoDL-Projects' RANDOM.config (nb201).
RSWS_DEFAULTS = {
    "darts": {"epochs": 150, "channels": 24, "layers": 8, "batch_size": 64, "lr": 0.025, "weight_decay": 3e-4,
              "momentum": 0.9, "nesterov": False, "lr_schedule": "epoch", "grad_clip": 1.0, "archs": 5000},
    "nb201": {"epochs": 250, "channels": 16, "layers": 5, "batch_size": 64, "lr": 0.025, "weight_decay": 5e-4,
              "momentum": 0.9, "nesterov": True, "lr_schedule": "step", "grad_clip": 5.0, "archs": 5000},
    # Li & Talwalkar's PTB search: DARTS' recurrent supernet and training (300 wide, SGD 20 constant,
    # wd 5e-7), proxyless, 50 epochs, batch 64, clip 0.1, 2000 architectures ranked.
    "rnn": {"epochs": 50, "channels": 300, "batch_size": 64, "lr": 20.0, "weight_decay": 5e-7, "momentum": 0.0,
            "nesterov": False, "lr_schedule": "constant", "grad_clip": 0.1, "archs": 2000},
}
CELL_STEPS = 4


@dataclass(frozen=True)
class RSWSConfig(SupernetConfig):
    """One random search with weight sharing: the supernet's training (shared fields) and the ranking."""

    archs: int | None = option(None, "architectures scored with the shared weights (default: 5000 on images, 2000 "
                                     "on PTB)", most=1_000_000)
    score_batches: int = option(10, "minibatches of the architecture half each of them is scored on", most=10_000)
    block: int = option(1000, "architectures per ranking block", most=1_000_000)
    rescore_top: int = option(10, "the best of each block re-scored on the whole architecture half", most=1000)
    candidates: int = option(1, "block winners (best first) handed to the evaluator; the best it scores is the answer",
                             most=100)

    algorithm: ClassVar[str] = "rsws"

    def __post_init__(self):
        super().__post_init__()
        for name in ("archs", "score_batches", "block", "rescore_top", "candidates"):
            check_int(name, getattr(self, name), optional=name == "archs")
        if self.rescore_top > self.block:
            raise ConfigError("rescore_top", f"re-scores more than the {self.block} architectures of a block",
                              f"at most block ({self.block})")
        if self.archs is None:
            return
        blocks = -(-self.archs // self.block)
        if self.candidates > blocks:
            raise ConfigError("candidates", f"{self.archs} architectures in blocks of {self.block} give "
                              f"{blocks} winner(s), not {self.candidates}", f"at most {blocks}")

    def defaults(self, space: str) -> dict[str, Any]:
        return dict(RSWS_DEFAULTS[space])


def sample_arch(space: str, generator: torch.Generator) -> Genotype | NB201Arch:
    """A uniformly random architecture: on nb201 an op (of 5, `none` included) per edge; on darts,
    per cell and node, two distinct inputs, each with an op of the 8 (`none` included)."""
    if space == "nb201":
        return NB201Arch(tuple(NB201_OPS[int(i)] for i in torch.randint(len(NB201_OPS), (6,), generator=generator)))

    def cell() -> tuple[tuple[str, int], ...]:
        pairs = []
        for node in range(CELL_STEPS):
            inputs = torch.randperm(node + 2, generator=generator)[:2]
            ops = torch.randint(len(PRIMITIVES), (2,), generator=generator)
            pairs += [(PRIMITIVES[int(op)], int(j)) for op, j in zip(ops, inputs)]
        return tuple(pairs)

    concat = tuple(range(2, 2 + CELL_STEPS))
    return Genotype(normal=cell(), normal_concat=concat, reduce=cell(), reduce_concat=concat)


def rsws_epochs(space: SearchSpace, dataset: ImageData, config: RSWSConfig, seed: int,
                checkpoint: str | None = None) -> Iterator[dict]:
    """Run the three stages' first two; yield a report per training epoch and per ranking block
    (`stage`, `epoch` counting from 1 within it). The last report's `candidates` are the answer."""
    check_search(space, dataset)
    cfg = config.resolved(space.name)
    device = pick_device(cfg.device)
    return own_rng(lambda: _rsws(space, dataset, cfg, seed, device, checkpoint), device)


def _score(model: Supernet, path, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    correct = sum(int((model(x, path).argmax(1) == y).sum()) for x, y in batches)
    return correct / sum(len(y) for _, y in batches)


def _rsws(space: SearchSpace, dataset: ImageData, cfg: RSWSConfig, seed: int, device: torch.device,
          checkpoint: str | None) -> Iterator[dict]:
    with torch_threads(cfg.num_threads):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        w_half, a_half = dataset.to(device).halves(cfg.train_portion)
        model = build_supernet(space.name, cfg.channels, cfg.layers, w_half.in_channels,
                               w_half.num_classes).to(device).channels_last()
        optimizer = weight_optimizer(model, cfg)
        parts = {"model": model, "optimizer": optimizer, "generator": generator}
        state = load_checkpoint(checkpoint, cfg, seed, device, parts)
        history: list[dict] = state.get("history", [])
        winners: list[dict] = state.get("winners", [])
        yield from history
        if history and "candidates" in history[-1]:
            return

        def save() -> None:
            save_checkpoint(checkpoint, cfg, seed, device, parts, history=history, winners=winners)

        model.train()
        steps = steps_per_epoch(w_half, cfg)
        for epoch in range(sum(r["stage"] == "train" for r in history), cfg.epochs):
            start, losses, correct, seen = time.perf_counter(), [], 0, 0
            for step, (x, y) in enumerate(w_half.train_batches(cfg.batch_size, generator, steps)):
                path = single_path(space.name, sample_arch(space.name, generator), model.primitives)
                loss, right = weight_step(model, optimizer, cfg, cosine_lr(cfg, epoch, step, steps), x, y, path)
                losses.append(loss)
                correct += right
                seen += len(y)
            wall = time.perf_counter() - start
            history.append({"stage": "train", "epoch": epoch + 1, "algorithm": cfg.algorithm,
                            "lr": cosine_lr(cfg, epoch, 0, steps), "train_loss": float(torch.stack(losses).mean()),
                            "train_acc": float(correct) / max(seen, 1), "wall_time_s": wall,
                            "images_per_s": seen / wall if wall else 0.0})
            save()
            yield history[-1]

        model.eval()
        blocks = -(-cfg.archs // cfg.block)
        for b in range(len(winners), blocks):
            start = time.perf_counter()
            size = min(cfg.block, cfg.archs - b * cfg.block)
            # A fresh stream of batches per block, so that a block boundary is a point to resume at.
            batches = endless(a_half, cfg.batch_size, generator)
            scored = []
            with torch.no_grad():
                for i in range(size):
                    arch = sample_arch(space.name, generator)
                    path = single_path(space.name, arch, model.primitives)
                    scored.append((_score(model, path, [next(batches) for _ in range(cfg.score_batches)]), i, arch))
            top = sorted(scored, key=lambda t: (-t[0], t[1]))[:cfg.rescore_top]
            rescored = [(evaluate(model, a_half, 2 * cfg.batch_size,
                                  single_path(space.name, arch, model.primitives))[1], i, arch, score)
                        for score, i, arch in top]
            model.eval()  # `evaluate` hands the model back in training mode
            acc, _, arch, score = max(rescored, key=lambda t: (t[0], -t[1]))
            winners.append({"genotype": str(arch), "val_acc": acc, "minibatch_acc": score,
                            "skip_count": skip_count(arch)})
            best = max(winners, key=lambda w: w["val_acc"])  # the earliest of equals
            report = {"stage": "rank", "epoch": b + 1, "algorithm": cfg.algorithm,
                      "scored": b * cfg.block + size, "genotype": best["genotype"], "val_acc": best["val_acc"],
                      "skip_count": best["skip_count"], "block_genotype": str(arch), "block_val_acc": acc,
                      "block_minibatch_acc": score, "wall_time_s": time.perf_counter() - start}
            if b + 1 == blocks:
                ranked = sorted(enumerate(winners), key=lambda t: (-t[1]["val_acc"], t[0]))
                report["candidates"] = list(dict.fromkeys(w["genotype"] for _, w in ranked))[:cfg.candidates]
            history.append(report)
            save()
            yield report


def rsws_evaluator(config: RSWSConfig, space: SearchSpace, dataset: Data, evaluator: Evaluator) -> Evaluator:
    """What the rsws strategy's evaluations are: one random search with weight sharing, its
    candidates scored by `evaluator`."""
    return OneShotSearch(space, dataset, config, evaluator, rnn_rsws_epochs if space.name == "rnn" else rsws_epochs)


__all__ = ["RSWS_DEFAULTS", "RSWSConfig", "rsws_epochs", "rsws_evaluator", "sample_arch"]
