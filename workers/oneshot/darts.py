"""DARTS' bilevel search (Liu et al., ICLR 2019): network weights on one half of the data, alphas
on the other, first order or with the unrolled second-order step; NoisyDARTS (Chu et al.) is
the same search with noise and drop-path on the skip branch and without `none`. Auto-DeepLab's
search (autodeeplab.py) shares the bilevel epoch (`Bilevel`) with its own architecture step.

Each search's published settings per space are in its space's registration (cells.py, rnn.py);
the settings that make darts2 and noisy-darts are options whose defaults `Darts2Config` and
`NoisyDartsConfig` set: the unrolled step (xi = the weights' learning rate, eps = 0.01 /
||grad||), and NoisyDARTS' own search settings (batch 128, lr 0.05, `none` removed, lambda 0.2,
drop-path 0.3 on the skip branch).

Where the papers' code and text differ we follow the code: the weights' cosine ends at
lr_min = 0.001 (DARTS' text: 0) and alphas start at 1e-3 * N(0, 1) (text: zeros).

The collapse monitors can act (all off by default, as in the papers): `warmup_epochs` train the
weights with frozen alphas first (NoisyDARTS' --frozen-epochs), `early_stop_skips` stops the
search once the derived normal cell holds that many skip-connections (DARTS+: 2), and
`keep_best` answers the genotype of the epoch with the best supernet validation figure (accuracy;
perplexity on rnn) instead of the last one.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch.func import functional_call

from raynas.common import ConfigError, check_int, check_number
from raynas.common.options import option
from raynas.workers.oneshot.registry import supernet_for
from raynas.workers.oneshot.search import (
    Clock,
    Search,
    Stage,
    SupernetConfig,
    check_flag,
    get_rng,
    retuned,
    set_rng,
    weight_optimizer,
)
from raynas.workers.oneshot.supernet import Supernet


@dataclass(frozen=True)
class OneShotConfig(SupernetConfig):
    """DARTS' bilevel search, and the settings that vary it: the unrolled second-order step
    (`Darts2Config` sets it) and NoisyDARTS' noise, drop-path and op list (`NoisyDartsConfig`
    sets them, with its batch and learning rate)."""

    arch_lr: float | None = option(None, "the alphas' Adam learning rate (default: 3e-4 on image spaces, 3e-3 on "
                                         "rnn)")
    arch_betas: tuple[float, float] | None = option(None, "the alphas' Adam betas (default: (0.5, 0.999) on image "
                                                          "spaces, (0.9, 0.999) on rnn)")
    arch_weight_decay: float = option(1e-3, "the alphas' weight decay")
    second_order: bool = option(False, "step the alphas by DARTS' unrolled second-order gradient (a virtual weight "
                                       "step and a finite-difference Hessian-vector product), not at the current "
                                       "weights")
    unrolled_clip: bool | None = option(None, "second order: clip the virtual step's gradient and the validation "
                                              "gradient at the virtual weights to grad_clip, and scale the implicit "
                                              "term by the virtual step's clip coefficient (DARTS' recurrent "
                                              "architect; default: on rnn, off on the image spaces)")
    noise_lambda: float = option(0.0, "NoisyDARTS' lambda: Gaussian noise of std lambda x std(skip output) on the skip "
                                      "connection while training (0: none)")
    skip_drop_path: float = option(0.0, "drop-path probability of the skip branch, in training and evaluation "
                                        "(NoisyDARTS' search code)")
    drop_none: bool = option(False, "leave `none` out of the darts supernet's ops (NoisyDARTS' list); nb201 keeps it, "
                                    "an edge's choice there")
    warmup_epochs: int = option(0, "epochs that train the weights with frozen alphas first (NoisyDARTS' frozen "
                                   "epochs)", most=1000)
    early_stop_skips: int | None = option(None, "stop once the derived normal cell holds this many skip-connections "
                                                "(DARTS+: 2)", most=1000)
    keep_best: bool = option(False, "answer the genotype of the epoch with the best supernet validation figure "
                                    "(accuracy; perplexity on rnn), not the last")

    algorithm: ClassVar[str] = "darts"
    recipe: ClassVar[str] = "darts"

    def __post_init__(self):
        super().__post_init__()
        check_number("arch_lr", self.arch_lr, 0, low_open=True, optional=True)
        check_number("arch_weight_decay", self.arch_weight_decay, 0)
        check_number("noise_lambda", self.noise_lambda, 0)
        check_number("skip_drop_path", self.skip_drop_path, 0, 1, high_open=True)
        for name in ("second_order", "drop_none", "keep_best"):
            check_flag(name, getattr(self, name))
        if self.unrolled_clip is not None:
            check_flag("unrolled_clip", self.unrolled_clip)
        check_int("warmup_epochs", self.warmup_epochs, 0)
        check_int("early_stop_skips", self.early_stop_skips, optional=True)
        if self.arch_betas is not None:
            betas = tuple(self.arch_betas) if isinstance(self.arch_betas, (list, tuple)) else ()
            if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
                raise ConfigError("arch_betas", f"must be two numbers in [0, 1), got {self.arch_betas!r}")
            object.__setattr__(self, "arch_betas", betas)
        if self.epochs is not None and self.warmup_epochs >= self.epochs:
            raise ConfigError("warmup_epochs", f"{self.warmup_epochs} frozen epochs leave the alphas none of "
                              f"the {self.epochs}", f"fewer than epochs ({self.epochs})")

    def search_class(self) -> type[Search]:
        return DartsSearch

    def resolved(self, space: str) -> OneShotConfig:
        if supernet_for(space).skips is None:
            for name, acts in (("noise_lambda", "noises"), ("skip_drop_path", "drops"),
                               ("early_stop_skips", "counts")):
                if getattr(self, name):
                    raise ConfigError(name, f"{acts} skip-connections, which the {space} space has not",
                                      (OneShotConfig.__dataclass_fields__[name].default,))
        return super().resolved(space)


@dataclass(frozen=True)
class Darts2Config(OneShotConfig):
    """darts2: DARTS with its unrolled second-order step."""

    second_order: bool = retuned(OneShotConfig, "second_order", True)

    algorithm: ClassVar[str] = "darts2"


@dataclass(frozen=True)
class NoisyDartsConfig(OneShotConfig):
    """noisy-darts: DARTS with NoisyDARTS' published search settings (batch 128, lr 0.05, `none`
    removed, lambda 0.2, drop-path 0.3 on the skip branch). Its NB201 settings are not known to
    us, so the same batch and learning rate apply there, on top of the NB201 recipe."""

    batch_size: int | None = retuned(OneShotConfig, "batch_size", 128)
    lr: float | None = retuned(OneShotConfig, "lr", 0.05)
    noise_lambda: float = retuned(OneShotConfig, "noise_lambda", 0.2)
    skip_drop_path: float = retuned(OneShotConfig, "skip_drop_path", 0.3)
    drop_none: bool = retuned(OneShotConfig, "drop_none", True)

    algorithm: ClassVar[str] = "noisy-darts"


def _loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, params: dict | None = None) -> torch.Tensor:
    logits = model(x) if params is None else functional_call(model, params, (x,))
    return F.cross_entropy(logits, y)


def _grad(loss: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Gradients, zeros for inputs the loss does not use."""
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return [torch.zeros_like(i) if g is None else g for i, g in zip(inputs, grads)]


def clip_(tensors: list[torch.Tensor], max_norm: float) -> float:
    """Scale `tensors` in place to a joint norm of at most `max_norm` (torch's clip_grad_norm_ rule,
    on plain tensors); returns the factor applied, at most 1."""
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors)))
    coef = min(1.0, max_norm / (norm.item() + 1e-6))
    if coef < 1.0:
        torch._foreach_mul_(tensors, coef)
    return coef


def finite_difference_hvp(model: Supernet, vector: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                          r: float = 0.01) -> list[torch.Tensor]:
    """d/d(alpha) of (grad_w L(w, alpha) . v) by central differences, DARTS eq. 8:
    [grad_alpha L(w + eps v) - grad_alpha L(w - eps v)] / (2 eps), eps = r / ||v||.

    `vector` follows `model.named_network_parameters()`. The shifted weights are passed to a
    functional call, so the model's own weights are never modified (quark0/darts shifts them
    in place and back, which leaves rounding residue in w). Both passes draw the same random
    numbers (NoisyDARTS' noise, the skip branch's drop-path): with independent draws the
    difference of the two gradients is dominated by the difference of the noise, divided by
    2 eps, and the product is noise."""
    named = model.named_network_parameters()
    weights = [p.detach() for _, p in named]
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(vector)))
    eps = r / max(norm.item(), 1e-12)
    alphas = model.arch_parameters()
    device = weights[0].device
    randomness = get_rng(device)
    grads = []
    for sign in (1.0, -1.0):
        set_rng(randomness, device)
        # One fused multiply-add over all tensors per shift (torch.optim's multi-tensor path).
        shifted = dict(zip((n for n, _ in named), torch._foreach_add(weights, vector, alpha=sign * eps)))
        grads.append(_grad(_loss(model, x, y, shifted), alphas))
    return [(gp - gm) / (2 * eps) for gp, gm in zip(*grads)]


class Architect:
    """Updates the alphas on validation batches (Adam), first order or by DARTS' unrolled step."""

    def __init__(self, model: Supernet, config: OneShotConfig):
        self.model = model
        self.second_order = config.second_order
        #: DARTS' recurrent architect clips its virtual step; the CNN one does not.
        self.clip = config.grad_clip if config.unrolled_clip and config.grad_clip else None
        self.optimizer = torch.optim.Adam(model.arch_parameters(), lr=config.arch_lr, betas=config.arch_betas,
                                          weight_decay=config.arch_weight_decay)

    def step(self, x_train, y_train, x_val, y_val, lr: float, w_optimizer: torch.optim.SGD) -> None:
        for alpha, grad in zip(self.model.arch_parameters(),
                               self.gradient(x_train, y_train, x_val, y_val, lr, w_optimizer)):
            alpha.grad = grad
        self.optimizer.step()

    def gradient(self, x_train, y_train, x_val, y_val, lr: float, w_optimizer: torch.optim.SGD
                 ) -> list[torch.Tensor]:
        """The alphas' gradient: of L_val(w, alpha) (first order), or DARTS eq. 7 (second order)."""
        if self.second_order:
            return self._unrolled(x_train, y_train, x_val, y_val, lr, w_optimizer)
        return _grad(_loss(self.model, x_val, y_val), self.model.arch_parameters())

    def _unrolled(self, x_train, y_train, x_val, y_val, xi: float, w_optimizer: torch.optim.SGD
                  ) -> list[torch.Tensor]:
        """grad_alpha L_val(w', alpha) - xi * HVP, with w' = w - xi * (grad_w L_train + weight
        decay * w + momentum * momentum buffer): the step `w_optimizer` would take, momentum
        and weight decay read from it. xi is the weights' current learning rate.

        With `clip` (DARTS' rnn/architect.py): grad_w L_train is clipped to it first (factor c),
        the HVP's vector grad_w' L_val as well, and the implicit term is xi * c * HVP: the virtual
        step's Jacobian in alpha, the clip factor held constant. The reference scales by its raw
        ratio clip / ||g||, above 1 when nothing was clipped; we scale by the factor applied."""
        model = self.model
        named = model.named_network_parameters()
        weights = [p.detach() for _, p in named]
        step = list(torch.autograd.grad(_loss(model, x_train, y_train), [p for _, p in named]))
        scale = clip_(step, self.clip) if self.clip else 1.0
        group = w_optimizer.param_groups[0]
        if group["weight_decay"]:
            torch._foreach_add_(step, weights, alpha=group["weight_decay"])
        moving = [(i, w_optimizer.state[p]["momentum_buffer"]) for i, (_, p) in enumerate(named)
                  if w_optimizer.state.get(p, {}).get("momentum_buffer") is not None]
        if moving and group["momentum"]:
            torch._foreach_add_([step[i] for i, _ in moving], [b for _, b in moving], alpha=group["momentum"])
        virtual = [w.requires_grad_() for w in torch._foreach_add(weights, step, alpha=-xi)]
        alphas = model.arch_parameters()
        # Cloned BN statistics: the virtual step must not leave a trace in the real model.
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        val_loss = _loss(model, x_val, y_val, {**dict(zip((n for n, _ in named), virtual)), **buffers})
        grads = _grad(val_loss, alphas + virtual)
        d_alpha, d_w = grads[:len(alphas)], grads[len(alphas):]
        if self.clip:
            clip_(d_w, self.clip)
        hvp = finite_difference_hvp(model, d_w, x_train, y_train)
        return [da - xi * scale * h for da, h in zip(d_alpha, hvp)]


class Bilevel(Search):
    """Weights on one half of the data, the architecture on the other: per batch, from
    `warmup_epochs` on, a step of the architecture on its half's next batch, then one of the
    weights (DARTS' order). Each epoch reports the supernet's validation figures and the
    architecture its weights stand for, with the space's monitors; the last epoch's is the
    answer. A subclass sets `a_optimizer` and makes the architecture's step."""

    a_optimizer: torch.optim.Optimizer

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.w_optimizer = weight_optimizer(self.model, self.cfg)

    @abstractmethod
    def step_architecture(self, x: Any, y: torch.Tensor, x_arch: Any, y_arch: torch.Tensor, lr: float) -> None:
        """One step of the architecture on (`x_arch`, `y_arch`), with the weights' batch and
        learning rate at hand."""

    def parts(self) -> dict[str, Any]:
        return {**super().parts(), "w_optimizer": self.w_optimizer, "a_optimizer": self.a_optimizer}

    def stages(self) -> tuple[Stage, ...]:
        return (Stage("train", self.cfg.epochs, self.epoch),)

    def epoch(self, epoch: int, clock: Clock) -> dict[str, Any]:
        frozen = epoch < self.cfg.warmup_epochs

        def arch_step(x: Any, y: torch.Tensor, lr: float) -> None:
            self.feed.arch_batch(lambda x_arch, y_arch: self.step_architecture(x, y, x_arch, y_arch, lr))

        trained = self.train_epoch(self.w_optimizer, epoch, clock, None if frozen else arch_step)
        arch = self.entry.derive(self.model)
        return {**trained, "alphas_frozen": frozen, **self.feed.assess(self.model), "genotype": str(arch),
                **self.entry.monitors(self.model, arch)}

    def candidates(self, history: list[dict[str, Any]]) -> list[str]:
        return [history[-1]["genotype"]]


class DartsSearch(Bilevel):
    """DARTS' alphas (`Architect`), and its collapse monitors acting: an early stop, the best epoch."""

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.architect = Architect(self.model, self.cfg)
        self.a_optimizer = self.architect.optimizer

    def step_architecture(self, x: Any, y: torch.Tensor, x_arch: Any, y_arch: torch.Tensor, lr: float) -> None:
        self.architect.step(x, y, x_arch, y_arch, lr, self.w_optimizer)

    def stops(self, report: dict[str, Any]) -> str | None:
        limit = self.cfg.early_stop_skips
        if limit is None or report["alphas_frozen"] or report["skip_count"] < limit:
            return None
        return f"{report['skip_count']} skip-connections in the derived cell (early_stop_skips={limit})"

    def candidates(self, history: list[dict[str, Any]]) -> list[str]:
        if not self.cfg.keep_best:
            return super().candidates(history)
        figure, sign = f"val_{self.feed.metric}", self.feed.sign
        return [min(history, key=lambda r: sign * r[figure])["genotype"]]  # the first of equals: the earliest
