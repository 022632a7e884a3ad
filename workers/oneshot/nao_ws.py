"""NAO-WS (Luo et al., NeurIPS 2018, sec. 3.4): NAO whose candidates are scored with shared
weights instead of being trained one by one.

A DARTS-space supernet holds one set of weights for every (node, input, op); each
minibatch trains one architecture drawn uniformly from NAO's current pool, and only that
architecture's ops run. Every `eval_every` epochs every architecture of the pool is scored
on the same held-out batches with the shared weights (batch statistics, NAO's
`bn_train=True`); NAO (workers/nao.py) is trained on those scores and its gradient steps
from the best `top_k` replace the pool's worst with new architectures. The search's answer
is the best-scored architecture of the last scoring, which the ordinary evaluator then
trains (or looks up), as for the DARTS family (workers/oneshot/evaluator.py).

Settings follow NAO_pytorch@418ff71's NAO_V1 search and the TF NAO-WS run
(../shared/REFERENCES.md): 150 epochs, a re-scoring every 30, pool 1000, up to 500 new
per iteration; the child weights: SGD 0.025 cosine to 0.001, momentum 0.9, wd 3e-4, clip 5,
20 channels, 3 cells per stage (11 cells with the two reductions), 90 % of the training
split for the weights and 10 % held out for scoring, scoring batch 500. NAO_pytorch draws
a fresh random scoring batch for every architecture; we score all of them on the same
batches so that their scores compare.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from raynas.common import ConfigError, check_int, check_number
from raynas.common.options import option, parse_options
from raynas.common.threads import torch_threads
from raynas.search_spaces import SearchSpace
from raynas.search_spaces.types import Genotype
from raynas.workers.datasets import CLASSIFICATION, Data, require_task
from raynas.workers.datasets.images import ImageData
from raynas.workers.evaluation.base import EvalResult, Evaluator, Fidelity, Report
from raynas.workers.nao import NAOConfig, NAOController, kendall_tau
from raynas.workers.oneshot.derive import skip_count
from raynas.workers.oneshot.search import DEVICES
from raynas.workers.oneshot.supernet import DartsSearchCell, DartsSupernet
from raynas.workers.training import pick_device

#: Strategy options named `nao.<field>` are NAO's own (workers/nao.py's NAOConfig), e.g. nao.epochs=200.
NAO_PREFIX = "nao."


@dataclass(frozen=True)
class NAOWSConfig:
    """One NAO-WS search. `controller` holds NAO's own options (a NAOConfig, or a mapping of
    its fields; its preset defaults to `ws`); errors about them name `nao.<field>`."""

    epochs: int = option(150, "epochs that train the supernet", most=1000)
    eval_every: int = option(30, "epochs between two scorings of the pool (each followed by a NAO iteration but "
                                 "the last)", most=1000)
    batch_size: int = option(64, "the supernet's batch size", most=4096)
    lr: float = option(0.025, "the weights' learning rate (cosine)")
    lr_min: float = option(0.001, "where the weights' cosine ends")
    momentum: float = option(0.9, "the weights' SGD momentum")
    weight_decay: float = option(3e-4, "the weights' weight decay")
    grad_clip: float = option(5.0, "largest gradient norm of the weights")
    channels: int = option(20, "supernet width: initial channels", most=1024)
    layers: int = option(11, "supernet cells, reductions at 1/3 and 2/3 (11: NAO's 3 cells per stage)", most=64)
    train_portion: float = option(0.9, "share of the whole training set that trains the weights; the rest scores "
                                       "architectures")
    score_batch_size: int = option(500, "images per scoring batch", most=4096)
    score_batches: int = option(1, "batches each architecture is scored on", most=10_000)
    max_batches_per_epoch: int | None = option(None, "cut every epoch to this many batches", most=1_000_000)
    device: str = option("auto", "auto, cpu or cuda", choices=DEVICES)
    num_threads: int | None = option(None, "torch intra-op threads", most=256)
    controller: Any = None

    def __post_init__(self):
        for name in ("epochs", "eval_every", "batch_size", "channels", "layers", "score_batch_size",
                     "score_batches"):
            check_int(name, getattr(self, name))
        for name in ("max_batches_per_epoch", "num_threads"):
            check_int(name, getattr(self, name), optional=True)
        check_number("lr", self.lr, 0, low_open=True)
        check_number("lr_min", self.lr_min, 0)
        check_number("momentum", self.momentum, 0, 1, high_open=True)
        check_number("weight_decay", self.weight_decay, 0)
        check_number("grad_clip", self.grad_clip, 0)
        check_number("train_portion", self.train_portion, 0, 1, low_open=True, high_open=True)
        if self.device not in DEVICES:
            raise ConfigError("device", f"unknown device {self.device!r}", DEVICES)
        controller = self.controller
        if not isinstance(controller, NAOConfig):
            # NAO's options, preset ws unless they say otherwise; errors name nao.<option>.
            controller = parse_options(NAOConfig, {"preset": "ws", **(controller or {})}, NAO_PREFIX.rstrip("."),
                                       "NAO")
        object.__setattr__(self, "controller", controller.resolved())


# -- one architecture through the supernet ------------------------------------------------------

def _cell_forward(cell: DartsSearchCell, primitives: tuple[str, ...], s0: torch.Tensor, s1: torch.Tensor,
                  pairs: tuple[tuple[str, int], ...]) -> torch.Tensor:
    """The cell of `pairs` with the supernet's weights: each (op, input) runs that edge's op alone."""
    states = [cell.preprocess0(s0), cell.preprocess1(s1)]
    offset = 0
    for node in range(cell.steps):
        terms = [cell.edges[offset + source].ops[primitives.index(op)](states[source])
                 for op, source in pairs[2 * node:2 * node + 2]]
        states.append(terms[0] + terms[1])
        offset += len(states) - 1
    return torch.cat(states[-cell.multiplier:], dim=1)


def forward_genotype(model: DartsSupernet, x: torch.Tensor, genotype: Genotype) -> torch.Tensor:
    """Logits of the child `genotype` inside the supernet (its cells' concat is the last
    `multiplier` nodes, which every darts-space genotype has)."""
    if model.stem[0].weight.is_contiguous(memory_format=torch.channels_last):
        x = x.contiguous(memory_format=torch.channels_last)
    s0 = s1 = model.stem(x)
    for cell in model.cells:
        pairs = genotype.reduce if cell.reduction else genotype.normal
        s0, s1 = s1, _cell_forward(cell, model.primitives, s0, s1, pairs)
    return model.classifier(model.pool(s1).flatten(1))


# -- the search -----------------------------------------------------------------------------------

def _distinct_samples(space: SearchSpace, count: int, rng: np.random.Generator, codec) -> list[Hashable]:
    seen: dict[tuple[int, ...], Hashable] = {}
    for _ in range(100 * count):
        if len(seen) == count:
            break
        arch = space.sample(rng)
        seen.setdefault(codec.encode(arch), arch)
    return list(seen.values())


def _score(model: DartsSupernet, pool: list[Genotype], batches: list[tuple[torch.Tensor, torch.Tensor]]
           ) -> list[float]:
    """Accuracy of each architecture on `batches`, with batch statistics (train-mode BN, no updates kept)."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    scores = []
    with torch.no_grad():
        for arch in pool:
            correct = sum(int((forward_genotype(model, x, arch).argmax(1) == y).sum()) for x, y in batches)
            scores.append(correct / sum(len(y) for _, y in batches))
    model.load_state_dict(state)
    return scores


def nao_ws_search(space: SearchSpace, dataset: ImageData, config: NAOWSConfig, seed: int,
                  report: Report) -> tuple[Genotype, dict[str, Any]]:
    """Run one NAO-WS search; `report` hears every epoch. Returns the best-scored genotype of
    the last scoring and a summary. torch's global RNG is forked: the caller's never moves."""
    if space.name != "darts":
        raise ConfigError("space", f"nao-ws searches the darts space, not {space.name!r}", ("darts",))
    require_task(dataset, CLASSIFICATION, "nao-ws searches")
    cfg = config
    device = pick_device(cfg.device)
    with torch.random.fork_rng(devices=[device.index] if device.type == "cuda" else []), \
            torch_threads(cfg.num_threads):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        rng = np.random.default_rng(seed)
        data = dataset.to(device)
        w_part, s_part = data.halves(cfg.train_portion)
        # Scored on plain images: the batches' augmentation is for training.
        s_part = dataclasses.replace(s_part, augment=False)
        model = DartsSupernet(cfg.channels, cfg.layers, in_channels=data.in_channels,
                              num_classes=data.num_classes).to(device).channels_last()
        optimizer = torch.optim.SGD(model.network_parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay)
        nao = NAOController(space, cfg.controller, seed)
        pool = _distinct_samples(space, cfg.controller.seed_archs, rng, nao.codec)
        new: list[Genotype] = []
        best: tuple[Genotype, float] | None = None
        history: list[dict[str, Any]] = []
        model.train()
        for epoch in range(cfg.epochs):
            lr = cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * epoch / cfg.epochs))
            for group in optimizer.param_groups:
                group["lr"] = lr
            start, losses, correct, seen = time.perf_counter(), [], 0, 0
            for x, y in w_part.train_batches(cfg.batch_size, generator, cfg.max_batches_per_epoch):
                arch = pool[int(rng.integers(len(pool)))]
                optimizer.zero_grad(set_to_none=True)
                logits = forward_genotype(model, x, arch)
                loss = F.cross_entropy(logits, y)
                loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.network_parameters(), cfg.grad_clip)
                optimizer.step()
                losses.append(loss.detach())
                correct += int((logits.detach().argmax(1) == y).sum())
                seen += len(y)
            record: dict[str, Any] = {
                "epoch": epoch + 1, "lr": lr, "train_loss": float(torch.stack(losses).mean()),
                "train_acc": correct / max(seen, 1), "pool": len(pool), "wall_time_s": time.perf_counter() - start,
            }
            last = epoch + 1 == cfg.epochs
            if (epoch + 1) % cfg.eval_every == 0 or last:
                batches = list(s_part.train_batches(cfg.score_batch_size, generator, cfg.score_batches))
                scores = _score(model, pool, batches)
                record.update(_iteration(nao, pool, scores, new))
                top = int(np.argmax(scores))
                best = (pool[top], scores[top])
                record.update({"val_acc": best[1], "genotype": str(best[0]), "skip_count": skip_count(best[0]),
                               "pool_mean_acc": float(np.mean(scores))})
                if not last:
                    pool, new = _next_pool(nao, pool, scores, cfg.controller)
                    record["new_proposals"] = len(new)
            history.append(record)
            report(record)
    return best[0], {"epochs": cfg.epochs, "val_acc": best[1], "genotype": str(best[0]),
                     "skip_count": skip_count(best[0]),
                     "search_time_s": sum(r["wall_time_s"] for r in history),
                     "nao": [{k: r.get(k) for k in SIGNALS} for r in history if "genotype" in r]}


#: NAO's figures of one scoring, repeated in the evaluation's metrics.
SIGNALS = ("epoch", "val_acc", "pool_mean_acc", "predictor_mae", "predictor_tau", "reconstruction_acc",
           "new_proposals", "genotype")


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


class NAOWSSearch(Evaluator):
    """Evaluates nothing given: each evaluation is one NAO-WS search (`arch` must be None),
    then the ordinary evaluation of its best cell. Its budget is the search's epochs."""

    name = "nao-ws"

    def __init__(self, space: SearchSpace, dataset: Data, config: NAOWSConfig, evaluator: Evaluator):
        self.space, self.dataset, self.config, self.evaluator = space, dataset, config, evaluator
        self.fidelity = Fidelity(maximum=config.epochs, default=config.epochs, choices=(config.epochs,))

    def _evaluate(self, arch: Hashable, seed: int, budget: int, report: Report, checkpoint: str | None) -> EvalResult:
        if arch is not None:
            raise ConfigError("arch", "a NAO-WS search finds its architecture; submit its task with arch None")
        genotype, summary = nao_ws_search(self.space, self.dataset, self.config, seed, report)
        result = self.evaluator.evaluate(genotype, seed)
        result.metrics["nao_ws"] = {**summary, "evaluation_budget": result.metrics.pop("budget", None)}
        return result


def nao_ws_evaluator(config: NAOWSConfig, space: SearchSpace, dataset: Data, evaluator: Evaluator) -> Evaluator:
    """What the nao-ws strategy's evaluations are: a NAO-WS search in front of `evaluator`."""
    return NAOWSSearch(space, dataset, config, evaluator)
