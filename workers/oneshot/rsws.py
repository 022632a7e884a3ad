"""Random search with weight sharing (Li & Talwalkar, "Random Search and Reproducibility for
Neural Architecture Search", UAI 2019), on every supernet whose space registers a sampler and a
single path (darts, nb201, rnn; their settings are in cells.py and rnn.py).

Its stages, as in the paper:
1. train the shared weights, one architecture sampled uniformly per minibatch; only that
   architecture's ops run (a single path through the supernet, so a step needs the memory
   of one child, not of the supernet);
2. rank: sample `archs` architectures, score each with the shared weights on `score_batches`
   minibatches of the architecture's data (accuracy on images, perplexity on text; 0: on all of
   it, as on PTB), and re-score the `rescore_top` best of every `block` on the whole of it (none
   on PTB); each block's best is a winner;
3. the best `candidates` winners go to the ordinary evaluator (the spec's: the NB201 table, or
   training from scratch), which scores them as it scores any child.

The ranking is one for every space; the data decides what a minibatch is and which figure is
better (feeds.py): on images the architecture half's batches as they come (shuffled,
augmented: the reference's validation queue shares the training transform), in eval mode with
the supernet's running BN statistics, the re-scoring on that half un-augmented; on PTB every
cell on the whole validation stream in 1024 columns (Li & Talwalkar's wrapper), once.

Reports: one per training epoch (`stage` train) and one per ranking block (`stage` rank, with
the best architecture so far); the last names the `candidates`. With a checkpoint file the
search saves its state after every training epoch and every ranking block and continues from
there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from raynas.common import ConfigError, check_int
from raynas.common.options import option
from raynas.workers.oneshot.search import Clock, Search, Stage, SupernetConfig, weight_optimizer


@dataclass(frozen=True)
class RSWSConfig(SupernetConfig):
    """One random search with weight sharing: the supernet's training (shared fields) and the ranking."""

    archs: int | None = option(None, "architectures scored with the shared weights (default: 5000 on images, 2000 "
                                     "on PTB)", most=1_000_000)
    score_batches: int | None = option(None, "minibatches of the architecture's data each of them is scored on, 0 "
                                             "for all of it (default: 10 on images; 0 on PTB)", most=10_000)
    block: int = option(1000, "architectures per ranking block", most=1_000_000)
    rescore_top: int | None = option(None, "the best of each block re-scored on all of the architecture's data, 0 "
                                           "for none (default: 10 on images; 0 on PTB)", most=1000)
    candidates: int = option(1, "block winners (best first) handed to the evaluator; the best it scores is the answer",
                             most=100)

    algorithm: ClassVar[str] = "rsws"
    recipe: ClassVar[str] = "rsws"

    def __post_init__(self):
        super().__post_init__()
        for name in ("archs", "block", "candidates"):
            check_int(name, getattr(self, name), optional=name == "archs")
        for name in ("score_batches", "rescore_top"):
            check_int(name, getattr(self, name), 0, optional=True)
        if self.rescore_top is not None and self.rescore_top > self.block:
            raise ConfigError("rescore_top", f"re-scores more than the {self.block} architectures of a block",
                              f"at most block ({self.block})")
        if self.archs is None:
            return
        blocks = -(-self.archs // self.block)
        if self.candidates > blocks:
            raise ConfigError("candidates", f"{self.archs} architectures in blocks of {self.block} give "
                              f"{blocks} winner(s), not {self.candidates}", f"at most {blocks}")

    def search_class(self) -> type[Search]:
        return RandomWeightSharing


class RandomWeightSharing(Search):
    """Li & Talwalkar's two stages on the space's supernet, its sampler and single path."""

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.optimizer = weight_optimizer(self.model, self.cfg)
        #: Each ranking block's best, in block order.
        self.winners: list[dict[str, Any]] = []

    def parts(self) -> dict[str, Any]:
        return {**super().parts(), "optimizer": self.optimizer, "ranking": self}

    def state_dict(self) -> dict[str, Any]:
        return {"winners": [dict(w) for w in self.winners]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.winners = [dict(w) for w in state["winners"]]

    def stages(self) -> tuple[Stage, ...]:
        return (Stage("train", self.cfg.epochs, self.train),
                Stage("rank", -(-self.cfg.archs // self.cfg.block), self.rank))

    def sample(self) -> tuple[Any, Any]:
        """A uniformly sampled architecture and its path through the supernet."""
        arch = self.entry.sample(self.space, self.generator)
        return arch, self.entry.path(arch, self.model.primitives)

    def train(self, epoch: int, clock: Clock) -> dict[str, Any]:
        return self.train_epoch(self.optimizer, epoch, clock, path=lambda: self.sample()[1])

    def rank(self, block: int, clock: Clock) -> dict[str, Any]:
        cfg, feed, model = self.cfg, self.feed, self.model
        size = min(cfg.block, cfg.archs - block * cfg.block)
        # A fresh stream of minibatches per block, so that a block boundary is a point to resume at.
        score = feed.scorer(cfg.score_batches) if cfg.score_batches else feed.rescore
        scored = []
        with torch.no_grad():
            for i in range(size):
                arch, path = self.sample()
                scored.append((score(model, path), i, arch, path))
        # Ties go to the earliest sampled; `sign` puts the best figure first.
        ranked = sorted(scored, key=lambda t: (feed.sign * t[0], t[1]))
        if cfg.rescore_top:
            rescored = [(feed.rescore(model, path), i, arch, minibatch)
                        for minibatch, i, arch, path in ranked[:cfg.rescore_top]]
            value, _, arch, minibatch = min(rescored, key=lambda t: (feed.sign * t[0], t[1]))
        else:
            minibatch, _, arch, _ = ranked[0]
            value = minibatch
        val, m = f"val_{feed.metric}", feed.metric
        skips = {} if self.entry.skips is None else {"skip_count": self.entry.skips(arch)}
        self.winners.append({"genotype": str(arch), val: value, f"minibatch_{m}": minibatch, **skips})
        best = min(self.winners, key=lambda w: feed.sign * w[val])  # the earliest of equals
        return {"scored": block * cfg.block + size, "genotype": best["genotype"], val: best[val],
                **{k: best[k] for k in skips}, "block_genotype": str(arch), f"block_{val}": value,
                f"block_minibatch_{m}": minibatch}

    def candidates(self, history: list[dict[str, Any]]) -> list[str]:
        figure = f"val_{self.feed.metric}"
        ranked = sorted(enumerate(self.winners), key=lambda t: (self.feed.sign * t[1][figure], t[0]))
        return list(dict.fromkeys(w["genotype"] for _, w in ranked))[:self.cfg.candidates]


__all__ = ["RSWSConfig", "RandomWeightSharing"]
