"""Auto-DeepLab (Liu et al., CVPR 2019): a one-shot search of the cell and of the network's
path through the trellis, for semantic segmentation. Each evaluation is one search with its own
seed (first-order bilevel on two halves of the training set, the cell derived like DARTS, the
path decoded by Viterbi), then the decoded network trained and scored by mean IoU; the job keeps
the best. Runs like the other one-shot strategies: parallel seeds on the cluster, per-epoch
monitors in oneshot.jsonl, resumable from each search's epoch checkpoint.
"""

from __future__ import annotations

from raynas.controller.strategies import register
from raynas.controller.strategies.oneshot import OneShotStrategy
from raynas.workers.oneshot import AutoDeepLabConfig


@register
class AutoDeepLab(OneShotStrategy):
    """Options: `AutoDeepLabConfig`'s fields (epochs, batch_size, channels = F, layers = L, lr,
    arch_lr, warmup_epochs, ...); the space must be autodeeplab and the dataset a segmentation set."""

    name = "autodeeplab"
    summary = "Auto-DeepLab's hierarchical cell and path search for segmentation (one-shot)"
    Options = AutoDeepLabConfig
