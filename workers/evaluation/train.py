"""Train a child network from scratch and score it: Zoph & Le's evaluator.

One `TrainEvaluator` lives in a worker process and evaluates many children in
turn, so the dataset is loaded (and moved to the device) once, the training
loop avoids per-step host synchronisation, and each child's model and
optimizer are released before the next one is built.
"""

from __future__ import annotations

import gc
import os
import weakref
from collections.abc import Hashable
from typing import Any

import numpy as np
import torch

from raynas.common import ConfigError
from raynas.common.files import atomic_save
from raynas.common.threads import torch_threads
from raynas.search_spaces import SearchSpace
from raynas.workers.datasets import Data, require_task
from raynas.workers.datasets.images import ImageData
from raynas.workers.evaluation import register_evaluator
from raynas.workers.evaluation.base import Cancelled, EvalResult, Evaluator, Fidelity, Report, Scoring, resolve_arch
from raynas.workers.nets import NetConfig, build_model, space_task
from raynas.workers.profile import count_flops, count_params
from raynas.workers.retrain import selection_recipe
from raynas.workers.training import (
    PPL_REWARD_CONSTANT,
    REWARD_WINDOW,
    TrainConfig,
    TrainingRun,
    check_cutout,
    pick_device,
    resolve_speed,
)

#: What each epoch's validation reports, by task.
METRICS = {"classification": "val_acc", "segmentation": "val_miou", "language_model": "val_ppl"}


@register_evaluator
class TrainEvaluator(Evaluator):
    """Builds the child with `build_model`, trains it from scratch on `dataset`,
    validates after every epoch and turns the validation curve into the reward.

    Budgets are epochs of the configured schedule: `config.epochs` is the full budget,
    and an evaluation at a smaller budget stops early on the same cosine schedule, so a
    continued evaluation equals one that ran straight through.

    On CUDA the loop trains fast unless told otherwise (autocast, channels-last, pinned copies,
    cuDNN's autotuner: `TrainConfig`); on CPU in fp32, and every evaluation's metrics say which
    (`precision`, `channels_last`, `pin_memory`, `cudnn_benchmark`). The same (arch, seed) gives
    the same result on one machine (on CUDA up to cuDNN's choice of algorithms, which its
    autotuner may make differently between runs): the seed drives weight init, dropout and the
    batch order, and the caller's global RNG is left as it was.
    """

    name = "train"
    summary = "train each child from scratch on the search's dataset and score it by validation (Zoph & Le)"
    Options = TrainConfig
    needs_data = True
    budget_option = "epochs"

    @classmethod
    def check(cls, space: SearchSpace, dataset: Data, options: TrainConfig) -> None:
        require_task(dataset, space_task(space.name), f"the {space.name} space's networks")
        options.resolved(dataset.task)

    @classmethod
    def one_shot_defaults(cls, space: SearchSpace, dataset: Any) -> dict[str, Any]:
        # What a one-shot search derives is trained as DARTS' selection protocol trains it.
        return selection_recipe(space.name, dataset.name)

    @classmethod
    def budgets(cls, options: TrainConfig) -> Fidelity:
        return Fidelity(maximum=options.epochs, default=options.epochs)

    @classmethod
    def scoring(cls, space: SearchSpace, dataset: Data, options: TrainConfig) -> Scoring:
        metric = METRICS[dataset.task]
        return Scoring(dataset.name, metric, "min" if metric == "val_ppl" else "max")

    def __init__(self, space: SearchSpace, dataset: Data, config: TrainConfig | None = None):
        config = config or TrainConfig()
        self.check(space, dataset, config)
        self.space = space
        self._child: weakref.ref | None = None
        self.config = config.resolved(dataset.task)
        self.fidelity = Fidelity(maximum=self.config.epochs, default=self.config.epochs)
        self.device = pick_device(self.config.device)
        # Here, on the worker that owns the device, so that a setting the GPU cannot honour (bf16 on a
        # pre-Ampere card) is one ConfigError, not a failure of every child.
        resolve_speed(self.config, self.device, image=isinstance(dataset, ImageData))
        if isinstance(dataset, ImageData):
            check_cutout(self.config, dataset)
            self.dataset = dataset.to(self.device)
            self.net_config = NetConfig(
                in_channels=dataset.in_channels, num_classes=dataset.num_classes, image_size=dataset.image_size,
                auxiliary=self.config.auxiliary_weight > 0, drop_path=self.config.drop_path, **self._sizes(),
            )
        else:
            self.dataset = dataset
            self.net_config = NetConfig(vocab_size=dataset.vocab_size, **self._sizes())
        # Builders refuse settings their network cannot honour (e.g. auxiliary on nb201)
        # whatever the architecture: one trial build reports that here, as a ConfigError,
        # instead of as a failure of every child.
        with torch.random.fork_rng(devices=[]):
            build_model(space.name, space.sample(np.random.default_rng(0)), self.net_config)

    def _sizes(self) -> dict[str, int]:
        sizes = {"channels": self.config.channels, "layers": self.config.layers}
        return {k: v for k, v in sizes.items() if v is not None}

    def _evaluate(self, arch: Hashable, seed: int, budget: int, report: Report, checkpoint: str | None) -> EvalResult:
        arch = resolve_arch(self.space, arch)
        try:
            with torch_threads(self.config.num_threads):
                return self._train(arch, seed, budget, report, checkpoint)
        except torch.OutOfMemoryError as exc:
            reason = f"out of memory: {exc}"
        finally:
            self._release_child()
        # The except clause has dropped the traceback, so the child's tensors are
        # gone; hand the cached blocks back so the next child finds them in one piece.
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return EvalResult.failure(str(arch), reason, device=str(self.device))

    def _release_child(self) -> None:
        """Make sure the last child's model and optimizer are freed before the next one.

        Reference counting frees them as `_train` returns; only when something
        (e.g. a library's first-call initialisation) left a reference cycle is a
        full collection run, as it costs about 0.2 s in a process this size.
        """
        if self._child is not None and self._child() is not None:
            gc.collect()
        self._child = None

    def _train(self, arch: Hashable, seed: int, budget: int, report: Report, checkpoint: str | None) -> EvalResult:
        cuda = self.device.type == "cuda"
        image = isinstance(self.dataset, ImageData)
        with torch.random.fork_rng(devices=[self.device.index] if cuda else []):
            torch.manual_seed(seed)
            model = build_model(self.space.name, arch, self.net_config).to(self.device)
            self._child = weakref.ref(model)
            profile = {"params": count_params(model), "flops": count_flops(model, self._sample_input())}
            c = self.config
            optimizer = torch.optim.SGD(model.parameters(), lr=c.lr, momentum=c.momentum,
                                        nesterov=c.nesterov and c.momentum > 0, weight_decay=c.weight_decay)
            run = TrainingRun(model, optimizer, c, self.device, torch.Generator().manual_seed(seed),
                              unit="images" if image else "tokens", metric=self.dataset.metric if image else "ppl")
            start = self._restore(run, arch, seed, budget, checkpoint)
            name = f"val_{run.metric}"

            def on_epoch(epoch: int) -> None:
                if checkpoint:
                    # Not fsynced: losing it to a power cut costs a re-run, never a wrong result.
                    atomic_save({"arch": str(arch), "seed": seed, "epochs": epoch + 1, "run": run.state_dict()},
                                checkpoint, durable=False)
                report({"epoch": epoch + 1, name: run.val_curve[-1], "train_loss": run.train_loss_curve[-1]})

            try:
                failure = (run.fit_images if image else run.fit_text)(self.dataset, start, on_epoch, budget)
            except Cancelled as exc:
                metrics = {**profile, **run.metrics(), "device": str(self.device), "epochs": len(run.val_curve)}
                return EvalResult.cancelled(str(arch), str(exc) or "cancelled", budget=len(run.val_curve), **metrics)
        metrics = {**profile, **run.metrics(), "device": str(self.device), "epochs": len(run.val_curve),
                   "continued_from_epoch": start}
        if failure:
            return EvalResult.failure(str(arch), failure, **metrics)
        return EvalResult(str(arch), self._reward(run.val_curve), metrics=metrics)

    def _restore(self, run: TrainingRun, arch: Hashable, seed: int, budget: int, checkpoint: str | None) -> int:
        """Load the evaluation's own checkpoint, if any; returns the epochs it already holds."""
        if not checkpoint or not os.path.exists(checkpoint):
            return 0
        state: dict[str, Any] = torch.load(checkpoint, weights_only=False)
        if state["arch"] != str(arch) or state["seed"] != seed:
            raise ConfigError("checkpoint", f"{checkpoint} holds {state['arch']} (seed {state['seed']}), "
                              f"not {arch} (seed {seed})")
        if state["epochs"] > budget:
            raise ConfigError("budget", f"{checkpoint} is already at {state['epochs']} epochs, past {budget}")
        run.load_state_dict(state["run"])
        return state["epochs"]

    def _sample_input(self) -> torch.Tensor:
        if isinstance(self.dataset, ImageData):
            return self.dataset.sample_input()
        return self.dataset.val[:self.config.bptt, None].to(self.device)

    def _reward(self, curve: list[float]) -> float:
        window = curve[-REWARD_WINDOW:]
        if self.config.reward == "zoph":
            return max(window) ** 3
        if self.config.reward == "last":
            return curve[-1]
        if self.config.reward == "max":
            return max(curve)
        # Perplexity: lower is better, so the best of the same final window as images.
        return PPL_REWARD_CONSTANT / min(window) ** 2
