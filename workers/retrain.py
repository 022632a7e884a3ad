"""Retrain an architecture from scratch with its evaluation recipe: what a user does with
the architecture a search found (`nas train`), and DARTS' final evaluation.

Segmentation networks (autodeeplab) train the same way on a segmentation dataset, per-pixel
cross-entropy with the ignore label, scored by mean IoU, with DeepLab's poly learning rate.
Language models (rnn, nasrnn) follow DARTS' PTB evaluation instead (`LANGUAGE_RECIPE`): the training
stream trains, every epoch reports the validation perplexity, averaged SGD takes over when it stalls,
and the result holds the test perplexity (with the averaged weights once averaging).

As DARTS' train.py does for images: the whole official training set trains (no validation hold-out), every
epoch reports the test accuracy, and the network trains in fp32 (bf16 autocast on CUDA only when
asked for). A dataset without a test split (digits) keeps its validation split held out and
reports that. `retrain_seeds` repeats the training over seeds and reports the mean and standard
deviation, the figure DARTS' tables give.

The loop is the one every child trains with (`TrainingRun`), with a checkpoint after every epoch (weights,
optimizer, RNG states, curves; written atomically) so an interrupted run continues where
it stopped and ends as an uninterrupted one would. The result, with the test accuracy,
goes to OUT/result.json. Both files hold the data's preprocessing (`Data.preprocessing`: the
normalisation and class names of images, a language model's vocabulary), which `nas export` builds
into the model, and result.json where the data came from (`data_source`), which `nas train --run OUT`
retrains on.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from raynas.common import ConfigError
from raynas.common.files import atomic_save, write_json_atomic
from raynas.common.threads import torch_threads
from raynas.search_spaces import get_space
from raynas.workers.datasets import Data, require_task
from raynas.workers.nets import LANGUAGE_SPACES, NetConfig, build_model, space_task
from raynas.workers.profile import count_params
from raynas.workers.training import TrainConfig, TrainingRun, check_cutout, pick_device

#: DARTS' CIFAR-10 evaluation (Liu et al., ICLR 2019, sec. A.2): 600 epochs, batch 96, C=36, 20 cells,
#: SGD 0.025 (plain momentum 0.9, wd 3e-4) on a cosine to 0, clip 5, auxiliary 0.4, drop-path 0.2
#: ramped, cutout 16. DARTS anneals per epoch; the shared loop anneals per step (same curve, finer).
CELL_RECIPE: dict[str, Any] = {"epochs": 600, "batch_size": 96, "lr": 0.025, "momentum": 0.9, "nesterov": False,
                               "weight_decay": 3e-4, "grad_clip": 5.0, "channels": 36, "layers": 20,
                               "auxiliary_weight": 0.4, "drop_path": 0.2, "cutout": 16}
#: NAS-Bench-201's training: 200 epochs, batch 256, Nesterov SGD 0.1 cosine, wd 5e-4.
NB201_RECIPE: dict[str, Any] = {"epochs": 200, "batch_size": 256, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}
#: Auto-DeepLab's decoded network, DeepLab-style: momentum SGD with the poly schedule (power 0.9).
#: REFERENCES holds the search's settings only; the rest (lr 0.05, wd 1e-4, batch 16, 30 epochs,
#: F = 8) is ours, sized for the composed set on a CPU.
AUTODEEPLAB_RECIPE: dict[str, Any] = {"epochs": 30, "batch_size": 16, "lr": 0.05, "momentum": 0.9, "nesterov": False,
                                      "weight_decay": 1e-4, "grad_clip": 5.0, "lr_schedule": "poly"}
#: DARTS' PTB evaluation (Liu et al., ICLR 2019; quark0/darts rnn/train.py's defaults): embedding =
#: hidden = 850, batch 64, windows drawn around BPTT 35 with the learning rate scaled to their
#: length, plain SGD at a constant lr 20, wd 8e-7, clip 0.25, TAR 1e-3, averaged SGD once the
#: validation perplexity stops improving over 5 epochs, up to 8000 epochs, the weights of the best
#: validation epoch kept (a NaN goes back to them; the test perplexity is theirs, at batch
#: TEST_BATCH_SIZE); dropouts in `LANGUAGE_NET`.
LANGUAGE_RECIPE: dict[str, Any] = {"epochs": 8000, "batch_size": 64, "bptt": 35, "lr": 20.0, "momentum": 0.0,
                                   "weight_decay": 8e-7, "grad_clip": 0.25, "channels": 850,
                                   "lr_schedule": "constant", "asgd_nonmono": 5, "eval_batch_size": 10, "tar": 1e-3,
                                   "bptt_jitter": True, "keep_best": True}
#: DARTS' rnn/train.py scores the test split in one column.
TEST_BATCH_SIZE = 1
#: DARTS' PTB evaluation dropouts: outputs 0.75, h 0.25, x 0.75, embeddings 0.2, words 0.1.
LANGUAGE_NET: dict[str, float] = {"dropout": 0.75, "dropout_h": 0.25, "dropout_x": 0.75, "dropout_i": 0.2,
                                  "dropout_e": 0.1}
RECIPES = {"darts": CELL_RECIPE, "nasnet": CELL_RECIPE, "nb201": NB201_RECIPE, "autodeeplab": AUTODEEPLAB_RECIPE,
           "rnn": LANGUAGE_RECIPE, "nasrnn": LANGUAGE_RECIPE}
#: How long DARTS' selection protocol trains each searched cell from scratch before keeping the best
#: by validation accuracy (Liu et al., sec. 3.3: 100 epochs on CIFAR-10); on nb201 the benchmark's
#: own short schedule, the 12 epochs its search protocol scores by.
SELECTION_EPOCHS = {"darts": 100, "nb201": 12, "autodeeplab": 10}
CHECKPOINT = "checkpoint.pt"
RESULT = "result.json"


def _recipe_for(space: str, dataset: str | None) -> dict[str, Any]:
    """The space's recipe for `dataset`: its cutout of 16 pixels is DARTS' setting for 32x32
    CIFAR-10, which would hide all of an 8x8 digit, so other datasets train without it unless asked."""
    fields = dict(RECIPES.get(space, {}))
    if dataset not in (None, "cifar10"):
        fields.pop("cutout", None)
    return fields


def recipe(space: str, dataset: str | None = None, **overrides: Any) -> TrainConfig:
    """The space's evaluation recipe for `dataset`, in fp32, with `overrides` (None values ignored) applied."""
    fields = {"autocast": False, **_recipe_for(space, dataset),
              **{k: v for k, v in overrides.items() if v is not None}}
    unknown = sorted(set(fields) - set(TrainConfig.field_names()))
    if unknown:
        raise ConfigError(unknown[0], "not a training option", TrainConfig.field_names())
    return TrainConfig(**fields)


def selection_recipe(space: str, dataset: str) -> dict[str, Any]:
    """The training options of DARTS' selection protocol on `space` (its evaluation recipe cut to
    SELECTION_EPOCHS, scored by the last epoch's validation accuracy); empty for a space without a
    recipe."""
    if space not in SELECTION_EPOCHS:
        return {}
    return {"autocast": False, **_recipe_for(space, dataset), "epochs": SELECTION_EPOCHS[space], "reward": "last"}


def resolve_source(source: str | None, space: str | None) -> tuple[str, str]:
    """(space, arch string) from a search's run directory (its best), a `nas train` output, or an
    arch string / published name."""
    if source and Path(source, "result.json").is_file():
        result = json.loads(Path(source, "result.json").read_text())
        if "arch" in result:  # a nas train output
            return result["space"], result["arch"]
        if not result.get("best"):
            raise ConfigError("arch", f"the search in {source} has no successful evaluation to train")
        return result["space"], result["best"]["arch"]
    if not source or not space:
        raise ConfigError("arch" if space else "space",
                          "give --space and --arch (a string or published name), or --run RUN_DIR")
    if source and Path(source).is_dir():
        raise ConfigError("arch", f"{source} is a directory without result.json (not a finished search)")
    arch = get_space(space).parse(source)
    return space, str(get_space(space).validate(arch))


def retrain(space: str, arch: str, dataset: Data, config: TrainConfig, out: str | Path, seed: int = 0,
            resume: bool = False, log: Callable[[str], None] = print,
            data_source: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Train `arch` on `dataset` into OUT (checkpoint.pt, result.json). `data_source` is where the
    data came from as given (`data_path`, `dataset_options`), recorded in result.json beside the
    dataset's name."""
    require_task(dataset, space_task(space), f"the {space} space's networks")
    language = space in LANGUAGE_SPACES
    out = Path(out)
    checkpoint = out / CHECKPOINT
    if resume and not checkpoint.exists():
        raise ConfigError("resume", f"{out} holds no checkpoint to resume")
    if not resume and (checkpoint.exists() or (out / RESULT).exists()):
        raise ConfigError("out", f"{out} already holds a training run; use --resume or a new --out")
    out.mkdir(parents=True, exist_ok=True)
    config = config.resolved(dataset.task)
    device = pick_device(config.device)
    preprocessing = dataset.preprocessing()
    if language:
        split, data = "test", dataset
        net = NetConfig(vocab_size=data.vocab_size, channels=config.channels, layers=config.layers, **LANGUAGE_NET)
    else:
        check_cutout(config, dataset)
        split = "test" if dataset.has_test else "val"
        data = dataset.whole_training_set().to(device)
        net = NetConfig(in_channels=data.in_channels, num_classes=data.num_classes, image_size=data.image_size,
                        channels=config.channels, layers=config.layers, auxiliary=config.auxiliary_weight > 0,
                        drop_path=config.drop_path)
    arch_value = get_space(space).parse(arch)
    with torch_threads(config.num_threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(space, arch_value, net).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                    nesterov=config.nesterov and config.momentum > 0,
                                    weight_decay=config.weight_decay)
        run = TrainingRun(model, optimizer, config, device, torch.Generator().manual_seed(seed),
                          unit="tokens" if language else "images", metric=data.metric)
        start_epoch = 0
        if resume:
            state = torch.load(checkpoint, weights_only=False)
            run.load_state_dict(state["run"])
            start_epoch = state["epoch"] + 1
            log(f"resuming at epoch {start_epoch + 1}/{config.epochs}")
        begun = time.perf_counter()

        def on_epoch(epoch: int) -> None:
            atomic_save({"epoch": epoch, "space": space, "arch": arch, "seed": seed, "net": vars(net),
                         "preprocessing": preprocessing, "run": run.state_dict()},
                        checkpoint, durable=False)
            switched = "; averaged SGD from here on" if run.averaged_from == epoch + 1 else ""
            score = (f"val ppl {run.val_curve[-1]:.2f}{switched}" if language
                     else f"{split} {data.metric} {run.val_curve[-1]:.4f}")
            log(f"epoch {epoch + 1}/{config.epochs}: train loss {run.train_loss_curve[-1]:.4f}, {score} "
                f"({time.perf_counter() - begun:.0f} s)")

        if language:
            failure = run.fit_text(data, start_epoch, on_epoch)
            score = {"metric": "ppl", "test_ppl": None if failure else run.perplexity(data, "test", TEST_BATCH_SIZE),
                     "averaged_from": run.averaged_from, "rollbacks": run.rollbacks,
                     "best_epoch": None if run.best is None else run.best["epoch"] + 1,
                     "train_samples": len(data.train)}
        else:
            failure = run.fit_images(data, start_epoch, on_epoch)
            score = {"metric": data.metric, "test_acc": None if failure else run.accuracy(data),
                     "train_samples": data.sizes["train"]}
        result = {
            "space": space, "arch": arch, "dataset": data.name, **(data_source or {}), "seed": seed,
            "epochs": config.epochs, "state": "failed" if failure else "done", "reason": failure,
            "params": count_params(model), "test_split": split, **score,
            # Each epoch's validation perplexity (language models), or the dataset's metric (`metric`:
            # acc, or miou for segmentation) on the test split (the validation split where there is none).
            "val_curve": run.val_curve, "train_loss_curve": run.train_loss_curve,
            "train_time_s": run.train_time_s, "config": {k: v for k, v in vars(config).items()},
            "checkpoint": str(checkpoint), "preprocessing": preprocessing,
        }
    write_json_atomic(out / RESULT, result)
    return result


def retrain_seeds(space: str, arch: str, dataset: Data, config: TrainConfig, out: str | Path,
                  seeds: list[int], resume: bool = False, log: Callable[[str], None] = print,
                  data_source: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`retrain` once per seed, in OUT/seed-<s>/, and the mean and standard deviation (over the
    runs, n - 1 in the denominator) of their test accuracy in OUT/result.json. Resuming skips the
    finished runs and continues the interrupted one."""
    out = Path(out)
    if not resume and (out / RESULT).exists():
        raise ConfigError("out", f"{out} already holds a training run; use --resume or a new --out")
    runs = []
    for seed in seeds:
        folder = out / f"seed-{seed}"
        if resume and (folder / RESULT).is_file():
            done = json.loads((folder / RESULT).read_text())
            if done.get("state") == "done":
                runs.append(done)
                continue
        log(f"seed {seed} ({len(runs) + 1} of {len(seeds)})")
        runs.append(retrain(space, arch, dataset, config, folder, seed=seed,
                            resume=resume and (folder / CHECKPOINT).exists(), log=log, data_source=data_source))
    metric = "test_ppl" if space in LANGUAGE_SPACES else "test_acc"
    scores = [r[metric] for r in runs if r["state"] == "done"]
    result = {
        "space": space, "arch": arch, "dataset": dataset.name, **(data_source or {}), "seeds": list(seeds),
        "epochs": config.epochs,
        "state": "done" if len(scores) == len(runs) else "failed",
        "reason": next((r["reason"] for r in runs if r["state"] != "done"), None),
        "test_split": runs[0]["test_split"], "params": runs[0]["params"], "metric": runs[0]["metric"],
        metric: statistics.mean(scores) if scores else None,
        f"{metric}_std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
        "runs": [{"seed": r["seed"], "state": r["state"], metric: r[metric],
                  "train_time_s": r["train_time_s"], "out": str(out / f"seed-{r['seed']}")} for r in runs],
    }
    write_json_atomic(out / RESULT, result)
    return result


__all__ = ["CELL_RECIPE", "LANGUAGE_NET", "LANGUAGE_RECIPE", "RECIPES", "SELECTION_EPOCHS", "recipe", "resolve_source",
           "retrain", "retrain_seeds",
           "selection_recipe"]
