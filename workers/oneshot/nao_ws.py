"""NAO-WS (Luo et al., NeurIPS 2018, sec. 3.4): NAO whose candidates are scored with shared
weights instead of being trained one by one.

A DARTS-space supernet holds one set of weights for every (node, input, op); each
minibatch trains one architecture drawn uniformly from NAO's current pool, and only that
architecture's ops run (its single path). Every `eval_every` epochs every architecture of the
pool is scored on the same held-out batches with the shared weights (batch statistics, NAO's
`bn_train=True`); NAO (workers/nao.py) is trained on those scores and its gradient steps
from the best `top_k` replace the pool's worst with new architectures. The search's answer
is the best-scored architecture of the last scoring, which the ordinary evaluator then
trains (or looks up), as for the DARTS family (workers/oneshot/evaluator.py).

Settings follow NAO_pytorch@418ff71's NAO_V1 search and the TF NAO-WS run
(../shared/REFERENCES.md): a re-scoring every 30 epochs, pool 1000, up to 500 new per
iteration, 90 % of the training split for the weights and 10 % held out for scoring, scoring
batch 500; the supernet's own (150 epochs, SGD 0.025 cosine to 0.001, momentum 0.9, wd 3e-4,
clip 5, 20 channels, 11 cells) are in the darts space's registration (cells.py). NAO_pytorch
draws a fresh random scoring batch for every architecture; we score all of them on the same
batches so that their scores compare.

The search runs in the one-shot loop (search.py): its checkpoint holds, beside the supernet, NAO
itself, the pool, the architectures NAO last proposed and the draws' RNG, so a search stopped
between two epochs continues as if it had not stopped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from raynas.common import check_int
from raynas.common.options import option, parse_options
from raynas.search_spaces import SearchSpace
from raynas.search_spaces.types import Genotype
from raynas.workers.datasets import Data
from raynas.workers.nao import NAOConfig, NAOController, kendall_tau
from raynas.workers.oneshot.derive import skip_count
from raynas.workers.oneshot.registry import OneShotSpace
from raynas.workers.oneshot.search import Clock, Search, Stage, SupernetConfig, retuned, weight_optimizer
from raynas.workers.oneshot.supernet import Path, Supernet

#: Strategy options named `nao.<field>` are NAO's own (workers/nao.py's NAOConfig), e.g. nao.epochs=200.
NAO_PREFIX = "nao."
#: NAO's figures of one scoring, repeated in the evaluation's metrics.
SIGNALS = ("epoch", "val_acc", "pool_mean_acc", "predictor_mae", "predictor_tau", "reconstruction_acc",
           "new_proposals", "genotype")


@dataclass(frozen=True)
class NAOWSConfig(SupernetConfig):
    """One NAO-WS search: the supernet's training (shared fields), its scorings, and NAO's own
    options in `controller` (a NAOConfig, or a mapping of its fields; its preset defaults to
    `ws`); errors about them name `nao.<field>`."""

    train_portion: float = retuned(SupernetConfig, "train_portion", 0.9)
    eval_every: int = option(30, "epochs between two scorings of the pool (each followed by a NAO iteration but "
                                 "the last)", most=1000)
    score_batch_size: int = option(500, "images per scoring batch", most=4096)
    score_batches: int = option(1, "batches each architecture is scored on", most=10_000)
    controller: Any = None

    algorithm: ClassVar[str] = "nao-ws"
    recipe: ClassVar[str] = "nao-ws"

    def __post_init__(self):
        super().__post_init__()
        for name in ("eval_every", "score_batch_size", "score_batches"):
            check_int(name, getattr(self, name))
        controller = self.controller
        if not isinstance(controller, NAOConfig):
            # NAO's options, preset ws unless they say otherwise; errors name nao.<option>.
            controller = parse_options(NAOConfig, {"preset": "ws", **(controller or {})}, NAO_PREFIX.rstrip("."),
                                       "NAO")
        object.__setattr__(self, "controller", controller.resolved())

    def search_class(self) -> type[Search]:
        return NAOWSSearch


def _distinct_samples(space: SearchSpace, count: int, rng: np.random.Generator, codec) -> list[Hashable]:
    seen: dict[tuple[int, ...], Hashable] = {}
    for _ in range(100 * count):
        if len(seen) == count:
            break
        arch = space.sample(rng)
        seen.setdefault(codec.encode(arch), arch)
    return list(seen.values())


def _score(model: Supernet, paths: list[Path], batches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[float]:
    """Accuracy of each path on `batches`, with batch statistics (train-mode BN, no updates kept)."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    scores = []
    with torch.no_grad():
        for path in paths:
            correct = sum(int((model(x, path).argmax(1) == y).sum()) for x, y in batches)
            scores.append(correct / sum(len(y) for _, y in batches))
    model.load_state_dict(state)
    return scores


def _iteration(nao: NAOController, pool: list[Genotype], scores: list[float], new: list[Genotype]) -> dict:
    """How well the predictor, as last trained, ranked the architectures it proposed, now that
    the supernet has scored them."""
    if not new or not nao.fitted:
        return {"predictor_mae": None, "predictor_tau": None}
    index = {a: i for i, a in enumerate(pool)}
    actual = [scores[index[a]] for a in new]
    predicted = nao.predict(new)
    return {"predictor_mae": float(np.mean(np.abs(np.subtract(predicted, actual)))),
            "predictor_tau": kendall_tau(predicted, actual)}


def _next_pool(nao: NAOController, pool: list[Genotype], scores: list[float], cfg: NAOConfig
               ) -> tuple[list[Genotype], list[Genotype]]:
    """Train NAO on the scored pool; its new architectures replace the worst of the pool."""
    nao.fit(pool, scores)
    ranked = [pool[i] for i in np.argsort(scores, kind="stable")[::-1]]
    new, _ = nao.propose(ranked[:cfg.top_k], min(cfg.new_archs, len(pool)), {nao.codec.encode(a) for a in pool})
    return ranked[:len(pool) - len(new)] + new, new


class NAOWSSearch(Search):
    """The supernet trained on NAO's pool, the pool scored and renewed by NAO every `eval_every`
    epochs; the last scoring's best is the answer."""

    def __init__(self, space: SearchSpace, entry: OneShotSpace, data: Data, cfg: NAOWSConfig, seed: int,
                 device: torch.device):
        super().__init__(space, entry, data, cfg, seed, device)
        self.optimizer = weight_optimizer(self.model, self.cfg)
        #: Draws the seed pool and each step's architecture.
        self.rng = np.random.default_rng(seed)
        self.nao = NAOController(space, self.cfg.controller, seed)
        self.pool = _distinct_samples(space, self.cfg.controller.seed_archs, self.rng, self.nao.codec)
        #: What NAO proposed last, scored at the next scoring.
        self.new: list[Genotype] = []
        # Scored on plain images: the batches' augmentation is for training.
        self.scoring = dataclasses.replace(self.feed.arch, augment=False)

    def parts(self) -> dict[str, Any]:
        return {**super().parts(), "optimizer": self.optimizer, "nao": self.nao, "pool": self}

    def state_dict(self) -> dict[str, Any]:
        fmt = self.space.format
        return {"pool": [fmt(a) for a in self.pool], "new": [fmt(a) for a in self.new],
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        parse = self.space.parse
        self.pool, self.new = [parse(a) for a in state["pool"]], [parse(a) for a in state["new"]]
        self.rng.bit_generator.state = state["rng"]

    def stages(self) -> tuple[Stage, ...]:
        return (Stage("train", self.cfg.epochs, self.epoch),)

    def epoch(self, epoch: int, clock: Clock) -> dict[str, Any]:
        cfg = self.cfg
        paths = [self.entry.path(a, self.model.primitives) for a in self.pool]
        trained = self.train_epoch(self.optimizer, epoch, clock, path=lambda: paths[int(self.rng.integers(len(paths)))])
        report = {**trained, "pool": len(self.pool)}
        last = epoch + 1 == cfg.epochs
        if (epoch + 1) % cfg.eval_every == 0 or last:
            batches = list(self.scoring.train_batches(cfg.score_batch_size, self.generator, cfg.score_batches))
            scores = _score(self.model, paths, batches)
            report.update(_iteration(self.nao, self.pool, scores, self.new))
            top = int(np.argmax(scores))
            report.update({"val_acc": scores[top], "genotype": str(self.pool[top]),
                           "skip_count": skip_count(self.pool[top]), "pool_mean_acc": float(np.mean(scores))})
            if not last:
                self.pool, self.new = _next_pool(self.nao, self.pool, scores, cfg.controller)
                report["new_proposals"] = len(self.new)
        return report

    def candidates(self, history: list[dict[str, Any]]) -> list[str]:
        return [history[-1]["genotype"]]

    @classmethod
    def summary(cls, history: list[dict[str, Any]]) -> dict[str, Any]:
        return {"nao": [{k: r.get(k) for k in SIGNALS} for r in history if "genotype" in r]}


__all__ = ["NAOWSConfig", "NAOWSSearch", "NAO_PREFIX"]
