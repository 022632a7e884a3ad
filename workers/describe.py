"""`nas inspect`: an architecture's drawing, parameter count and FLOPs."""

from __future__ import annotations

from typing import Any

import torch

from raynas.search_spaces import get_space
from raynas.workers.nets import LANGUAGE_SPACES, NetConfig, build_model
from raynas.workers.profile import count_aux_params, count_flops, count_params


def inspect_arch(
    space_name: str, arch_text: str, *, channels: int | None = None, layers: int | None = None,
    auxiliary: bool = False, num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
    vocab_size: int = 10000,
) -> dict[str, Any]:
    space = get_space(space_name)
    arch = space.validate(space.parse(arch_text))
    published = space.published_size(arch_text)
    if published and channels is None:
        channels = published[0]
        layers = published[2] if layers is None else layers
    if space_name in LANGUAGE_SPACES:
        config = NetConfig(vocab_size=vocab_size, **_sizes(channels, layers))
        sample = torch.zeros(35, 1, dtype=torch.long)
    else:
        config = NetConfig(in_channels=in_channels, num_classes=num_classes, image_size=image_size,
                           auxiliary=auxiliary, **_sizes(channels, layers))
        sample = torch.zeros(1, in_channels, image_size, image_size)
    model = build_model(space_name, arch, config)
    return {
        "space": space_name,
        "arch": str(arch),
        "drawing": space.draw(arch),
        "params": count_params(model),
        "params_auxiliary": count_aux_params(model),
        "flops": count_flops(model, sample),
        "published_params_M": published[1] if published else None,
        "config": {k: v for k, v in vars(config).items()},
    }


def _sizes(channels: int | None, layers: int | None) -> dict[str, int]:
    return {k: v for k, v in (("channels", channels), ("layers", layers)) if v is not None}
