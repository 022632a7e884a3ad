"""One-shot search: gradient-based (DARTS first and second order, NoisyDARTS) and random search
with weight sharing (rsws); supernets, the search loops, genotype derivation and collapse
monitors; Auto-DeepLab's hierarchical search lives in autodeeplab.py. Plain PyTorch."""

from __future__ import annotations

from raynas.common import ConfigError
from raynas.search_spaces.cell import PRIMITIVES
from raynas.workers.oneshot.derive import derive, edge_entropy, single_path, skip_count
from raynas.workers.oneshot.evaluator import OneShotSearch, search_evaluator
from raynas.workers.oneshot.rnn import RNNSupernet, rnn_rsws_epochs, rnn_search_epochs
from raynas.workers.oneshot.rsws import RSWSConfig, rsws_epochs, rsws_evaluator
from raynas.workers.oneshot.search import (
    SPACES,
    Architect,
    Darts2Config,
    NoisyDartsConfig,
    OneShotConfig,
    SupernetConfig,
    finite_difference_hvp,
    search_epochs,
)
from raynas.workers.oneshot.supernet import DartsSupernet, NB201Supernet, Supernet, build_supernet

#: The one-shot searches by name (their strategies'), each its settings with the paper's defaults.
SEARCHES = {config.algorithm: config for config in (OneShotConfig, Darts2Config, NoisyDartsConfig)}


def search_config(algorithm: str) -> type[SupernetConfig]:
    if algorithm not in SEARCHES:
        raise ConfigError("algorithm", f"unknown one-shot search {algorithm!r}", sorted(SEARCHES))
    return SEARCHES[algorithm]


def describe_supernet(space: str, channels: int | None = None, layers: int | None = None, num_classes: int = 10,
                      in_channels: int = 3, algorithm: str = "darts", vocab_size: int = 10_000) -> dict[str, int]:
    """Network weights (`params`) and architecture weights (`arch_params`) of a space's supernet;
    `channels` and `layers` default to the search settings (16; 8 cells for darts, 5 per stage for
    nb201; rnn: 300 wide, 8 nodes, over `vocab_size` words; autodeeplab: F = 8, L = 12)."""
    if space == "autodeeplab":
        from raynas.search_spaces.autodeeplab import LAYERS
        from raynas.workers.oneshot.autodeeplab import ADL_DEFAULTS, AutoDeepLabSupernet

        model = AutoDeepLabSupernet(channels or ADL_DEFAULTS["channels"], layers or LAYERS, in_channels, num_classes)
    elif space == "rnn":
        cfg = search_config(algorithm)(channels=channels).resolved(space)
        model = RNNSupernet(vocab_size, cfg.channels)
    else:
        cfg = search_config(algorithm)(channels=16 if channels is None else channels, layers=layers).resolved(space)
        model = build_supernet(space, cfg.channels, cfg.layers, in_channels, num_classes,
                               primitives=tuple(p for p in PRIMITIVES if p != "none") if cfg.drop_none else None)
    return {"params": sum(p.numel() for p in model.network_parameters()),
            "arch_params": sum(a.numel() for a in model.arch_parameters())}


__all__ = ["Architect", "Darts2Config", "DartsSupernet", "NB201Supernet", "NoisyDartsConfig", "OneShotConfig",
           "OneShotSearch", "RNNSupernet", "RSWSConfig", "SEARCHES", "SPACES", "Supernet", "SupernetConfig",
           "build_supernet", "derive", "describe_supernet", "edge_entropy", "finite_difference_hvp", "rnn_rsws_epochs",
           "rnn_search_epochs", "rsws_epochs", "rsws_evaluator", "search_config", "search_epochs", "search_evaluator",
           "single_path",
           "skip_count"]
