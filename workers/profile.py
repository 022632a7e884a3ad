"""Model size and cost: parameters (without the auxiliary head) and FLOPs.

FLOPs follow NAS-Bench-201's convention (AutoDL-Projects' flop_benchmark), so
figures for NB201 children compare with the benchmark table: multiply-accumulates
of every Conv2d and Linear, plus one addition per output for each bias. Pools,
normalisation, activations and element-wise sums are not counted.
"""

from __future__ import annotations

import torch
from torch import nn

AUXILIARY = "auxiliary_head"


def _auxiliary_parameters(model: nn.Module) -> set[int]:
    return {
        id(p)
        for name, module in model.named_modules()
        if name.rsplit(".", 1)[-1] == AUXILIARY
        for p in module.parameters()
    }


def count_params(model: nn.Module) -> int:
    """Parameters of `model`, shared ones once, without any `auxiliary_head` submodule's
    (it only helps training, so papers leave it out of model sizes)."""
    auxiliary = _auxiliary_parameters(model)
    return sum(p.numel() for p in model.parameters() if id(p) not in auxiliary)


def count_aux_params(model: nn.Module) -> int:
    """Parameters of the `auxiliary_head` submodules only."""
    auxiliary = _auxiliary_parameters(model)
    return sum(p.numel() for p in model.parameters() if id(p) in auxiliary)


def _layer_flops(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        per_output = module.in_channels // module.groups * kh * kw
    else:
        per_output = module.in_features
    return output.numel() * (per_output + (module.bias is not None))


def count_flops(model: nn.Module, input: torch.Tensor) -> int:
    """FLOPs of one forward pass over `input` in eval mode (pass a single example,
    e.g. images[:1], for per-example figures).

    Language models (anything with `init_hidden`) take a token tensor [T, B] and
    start from `init_hidden(B)`; the count covers all T steps.
    """
    total = 0

    def hook(module: nn.Module, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        total += _layer_flops(module, output)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if hasattr(model, "init_hidden"):
                model(input, model.init_hidden(input.shape[1]))
            else:
                model(input)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return total


def process_memory(field: str) -> int:
    """A memory figure of this process in bytes from /proc/self/status (Linux): `VmRSS`
    (resident now) or `VmHWM` (its peak), what the memory benchmarks compare."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")
