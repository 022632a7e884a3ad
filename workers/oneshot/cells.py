"""The darts and nb201 spaces' supernets (supernet.py) as the one-shot searches use them, and the
published settings of each search on them.

DARTS (Liu et al., ICLR 2019, sec. A.1), its CIFAR search: 50 epochs, C=16, 8 cells, batch 64,
SGD 0.025 cosine (per epoch) to 0.001, momentum 0.9, wd 3e-4, clip 5; alphas Adam 3e-4, betas
(0.5, 0.999), wd 1e-3. On nb201 the weights follow AutoDL-Projects' NB201 DARTS config instead
(C=16, N=5, wd 5e-4, Nesterov momentum, the cosine stepped every iteration), the rest as DARTS'.

Random search with weight sharing (Li & Talwalkar, UAI 2019; liamcli/randomNAS_release), its
CIFAR-10 search: 150 epochs, C=24, 8 cells, batch 64, SGD 0.025 cosine (per epoch) to 0.001,
momentum 0.9, wd 3e-4, clip 1, 5000 architectures ranked; on nb201 AutoDL-Projects' RANDOM
config (250 epochs, Nesterov, wd 5e-4, cosine per iteration) on the C=16, N=5 supernet, with the
same ranking. Sampling is uniform: on nb201 an op (of 5, `none` included) per edge; on darts, per
cell and node, two distinct inputs, each with an op of the 8 (`none` included).

NAO-WS (darts only; NAO_pytorch@418ff71's NAO_V1 search, the TF NAO-WS run): 150 epochs, SGD
0.025 cosine to 0.001, momentum 0.9, wd 3e-4, clip 5, 20 channels, 3 cells per stage (11 cells
with the two reductions), batch 64.
"""

from __future__ import annotations

from typing import Any

import torch

from raynas.common import ConfigError
from raynas.search_spaces import SearchSpace
from raynas.search_spaces.cell import PRIMITIVES
from raynas.search_spaces.nb201 import NB201_OPS, NB201Arch
from raynas.search_spaces.types import Genotype
from raynas.workers.datasets import CLASSIFICATION
from raynas.workers.oneshot.derive import (
    alpha_monitors,
    darts_path,
    derive_darts,
    derive_nb201,
    nb201_path,
    skip_count,
)
from raynas.workers.oneshot.feeds import ImageFeed
from raynas.workers.oneshot.registry import OneShotSpace, register_supernet
from raynas.workers.oneshot.supernet import DartsSupernet, NB201Supernet, Supernet

#: DARTS' search network reduces at cells layers//3 and 2*layers//3; below 3 cells no normal cell is left.
MIN_DARTS_LAYERS = 3
#: Nodes of a DARTS cell.
CELL_STEPS = 4
#: The alphas' Adam on the image spaces (DARTS' CIFAR search, kept on NB201 by AutoDL-Projects).
ARCH_DEFAULTS = {"arch_lr": 3e-4, "arch_betas": (0.5, 0.999), "unrolled_clip": False}
#: Li & Talwalkar's CIFAR-10 ranking: 5000 architectures, each on 10 minibatches, the top 10 of
#: every 1000 re-scored on the whole validation half.
RANKING_DEFAULTS = {"archs": 5000, "score_batches": 10, "rescore_top": 10}


def sample_darts(space: SearchSpace, generator: torch.Generator) -> Genotype:
    def cell() -> tuple[tuple[str, int], ...]:
        pairs = []
        for node in range(CELL_STEPS):
            inputs = torch.randperm(node + 2, generator=generator)[:2]
            ops = torch.randint(len(PRIMITIVES), (2,), generator=generator)
            pairs += [(PRIMITIVES[int(op)], int(j)) for op, j in zip(ops, inputs)]
        return tuple(pairs)

    concat = tuple(range(2, 2 + CELL_STEPS))
    return Genotype(normal=cell(), normal_concat=concat, reduce=cell(), reduce_concat=concat)


def sample_nb201(space: SearchSpace, generator: torch.Generator) -> NB201Arch:
    return NB201Arch(tuple(NB201_OPS[int(i)] for i in torch.randint(len(NB201_OPS), (6,), generator=generator)))


def _monitors(model: Supernet, arch: Genotype | NB201Arch) -> dict[str, Any]:
    return {"skip_count": skip_count(arch), **alpha_monitors(model.arch_weights())}


def _check_darts(config: Any) -> None:
    if config.layers < MIN_DARTS_LAYERS:
        raise ConfigError("layers", f"a darts supernet of {config.layers} cells has no normal cell (reductions "
                          f"sit at cells layers//3 and 2*layers//3), so its normal alphas never learn",
                          f"at least {MIN_DARTS_LAYERS}")


register_supernet(OneShotSpace(
    name="darts", task=CLASSIFICATION,
    build=lambda space, cfg, data: DartsSupernet(
        cfg.channels, cfg.layers, in_channels=data.in_channels, num_classes=data.num_classes,
        primitives=tuple(p for p in PRIMITIVES if p != "none") if cfg.drop_none else PRIMITIVES,
        noise_lambda=cfg.noise_lambda, skip_drop_path=cfg.skip_drop_path).channels_last(),
    feed=ImageFeed,
    defaults={
        "darts": {"epochs": 50, "channels": 16, "layers": 8, "batch_size": 64, "lr": 0.025, "weight_decay": 3e-4,
                  "momentum": 0.9, "nesterov": False, "lr_schedule": "epoch", "grad_clip": 5.0, **ARCH_DEFAULTS},
        "rsws": {"epochs": 150, "channels": 24, "layers": 8, "batch_size": 64, "lr": 0.025, "weight_decay": 3e-4,
                 "momentum": 0.9, "nesterov": False, "lr_schedule": "epoch", "grad_clip": 1.0, **RANKING_DEFAULTS},
        "nao-ws": {"epochs": 150, "channels": 20, "layers": 11, "batch_size": 64, "lr": 0.025, "weight_decay": 3e-4,
                   "momentum": 0.9, "nesterov": False, "lr_schedule": "epoch", "grad_clip": 5.0},
    },
    derive=lambda model: derive_darts(model.arch_weights(), model.primitives),
    monitors=_monitors, sample=sample_darts, path=darts_path, skips=skip_count, check=_check_darts))

register_supernet(OneShotSpace(
    name="nb201", task=CLASSIFICATION,
    # `drop_none` leaves nb201's `none` in: there it is an edge's choice, which derivation may make.
    build=lambda space, cfg, data: NB201Supernet(
        cfg.channels, cfg.layers, in_channels=data.in_channels, num_classes=data.num_classes,
        noise_lambda=cfg.noise_lambda, skip_drop_path=cfg.skip_drop_path).channels_last(),
    feed=ImageFeed,
    defaults={
        "darts": {"epochs": 50, "channels": 16, "layers": 5, "batch_size": 64, "lr": 0.025, "weight_decay": 5e-4,
                  "momentum": 0.9, "nesterov": True, "lr_schedule": "step", "grad_clip": 5.0, **ARCH_DEFAULTS},
        "rsws": {"epochs": 250, "channels": 16, "layers": 5, "batch_size": 64, "lr": 0.025, "weight_decay": 5e-4,
                 "momentum": 0.9, "nesterov": True, "lr_schedule": "step", "grad_clip": 5.0, **RANKING_DEFAULTS},
    },
    derive=lambda model: derive_nb201(model.arch_weights(), model.primitives),
    monitors=_monitors, sample=sample_nb201, path=nb201_path, skips=skip_count))
