"""One-shot search: supernets registered per space (registry.py: darts and nb201 in cells.py,
rnn, autodeeplab), one epoch loop (search.py) for every algorithm: the DARTS family (first and
second order, NoisyDARTS: darts.py), random search with weight sharing (rsws.py), Auto-DeepLab's
hierarchical search (autodeeplab.py) and NAO-WS (nao_ws.py); genotype derivation and collapse
monitors (derive.py); a search as an evaluation (evaluator.py). Plain PyTorch."""

from __future__ import annotations

from types import SimpleNamespace

from raynas.common import ConfigError
from raynas.search_spaces import get_space
from raynas.workers.oneshot.autodeeplab import AutoDeepLabConfig
from raynas.workers.oneshot.darts import Architect, Darts2Config, NoisyDartsConfig, OneShotConfig, finite_difference_hvp
from raynas.workers.oneshot.derive import darts_path, derive_darts, derive_nb201, edge_entropy, nb201_path, skip_count
from raynas.workers.oneshot.evaluator import OneShotSearch, search_evaluator
from raynas.workers.oneshot.nao_ws import NAOWSConfig
from raynas.workers.oneshot.registry import OneShotSpace, register_supernet, supernet_for, supernet_spaces
from raynas.workers.oneshot.rnn import RNNSupernet
from raynas.workers.oneshot.rsws import RSWSConfig
from raynas.workers.oneshot.search import Search, SupernetConfig, search_epochs
from raynas.workers.oneshot.supernet import DartsSupernet, NB201Supernet, Supernet

#: The one-shot searches by name (their strategies'), each its settings with its paper's defaults.
SEARCHES = {config.algorithm: config for config in (OneShotConfig, Darts2Config, NoisyDartsConfig, RSWSConfig,
                                                     AutoDeepLabConfig, NAOWSConfig)}


def search_config(algorithm: str) -> type[SupernetConfig]:
    """The settings of the one-shot search `algorithm`."""
    if algorithm not in SEARCHES:
        raise ConfigError("algorithm", f"unknown one-shot search {algorithm!r}", sorted(SEARCHES))
    return SEARCHES[algorithm]


def describe_supernet(space: str, channels: int | None = None, layers: int | None = None, num_classes: int = 10,
                      in_channels: int = 3, algorithm: str = "darts", vocab_size: int = 10_000) -> dict[str, int]:
    """Network weights (`params`) and architecture weights (`arch_params`) of `space`'s supernet
    as the search `algorithm` builds it (noisy-darts: without `none`), `channels` and `layers`
    defaulting to that search's published ones (darts: 16 wide, 8 cells; nb201: 5 cells per
    stage; rnn: 300 wide, 8 nodes, over `vocab_size` words; autodeeplab: F = 8, L = 12)."""
    entry = supernet_for(space)
    config = search_config(algorithm)
    if config.recipe not in entry.defaults and len(entry.defaults) == 1:
        # A space with one search (autodeeplab) has that search's supernet, whatever `algorithm` names.
        config = search_config(next(iter(entry.defaults)))
    cfg = config(channels=channels, layers=layers).resolved(space)
    data = SimpleNamespace(in_channels=in_channels, num_classes=num_classes, vocab_size=vocab_size)
    model = entry.build(get_space(space), cfg, data)
    return {"params": sum(p.numel() for p in model.network_parameters()),
            "arch_params": sum(a.numel() for a in model.arch_parameters())}


__all__ = ["SEARCHES", "Architect", "AutoDeepLabConfig", "Darts2Config", "DartsSupernet", "NAOWSConfig",
           "NB201Supernet", "NoisyDartsConfig", "OneShotConfig", "OneShotSearch", "OneShotSpace", "RNNSupernet",
           "RSWSConfig", "Search", "Supernet", "SupernetConfig", "darts_path", "derive_darts", "derive_nb201",
           "describe_supernet", "edge_entropy", "finite_difference_hvp", "nb201_path", "register_supernet",
           "search_config", "search_epochs", "search_evaluator", "skip_count", "supernet_for", "supernet_spaces"]
