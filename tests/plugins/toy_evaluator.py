"""An evaluator plug-in in one file: scores an architecture by how few parameters its network
would have (a stand-in for a hardware-aware proxy, with no training). Loaded by name
(RAYNAS_PLUGINS=toy_evaluator)."""

from __future__ import annotations

from dataclasses import dataclass

from raynas.common.options import option
from raynas.workers.evaluation import EvalResult, Evaluator, Fidelity, Scoring, register_evaluator, resolve_arch


@dataclass(frozen=True)
class CompactOptions:
    budget_mparams: float = option(1.0, "the size (millions of parameters) that scores 0.5", most=10_000)


@register_evaluator
class Compact(Evaluator):
    name = "toy-compact"
    summary = "toy plug-in: the fewer parameters, the better (no training)"
    Options = CompactOptions
    fidelity = Fidelity(maximum=1, default=1)

    def __init__(self, space, data=None, options: CompactOptions | None = None):
        self.space, self.options = space, options or CompactOptions()

    @classmethod
    def scoring(cls, space, dataset, options) -> Scoring:
        return Scoring("parameter count", "val_compactness", "max")

    def _evaluate(self, arch, seed, budget, report, checkpoint) -> EvalResult:
        from raynas.workers.nets import NetConfig, build_model
        from raynas.workers.profile import count_params

        arch = resolve_arch(self.space, arch)
        params = count_params(build_model(self.space.name, arch, NetConfig(channels=8, layers=1)))
        score = 1 / (1 + params / (self.options.budget_mparams * 1e6))
        report({"epoch": 1, "val_compactness": score})
        return EvalResult(str(arch), score, metrics={"params": params})
