"""`nas train` (retrain an architecture with its evaluation recipe) and `nas export`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any


def _train_arguments(t: argparse.ArgumentParser) -> None:
    from raynas.controller.cli.flags import key_value

    t.add_argument("--run", help="a search's run directory: train its best architecture on the search's dataset, "
                                 "data and dataset options (or a nas train output: its architecture and data)")
    t.add_argument("--space", help="search space of --arch")
    t.add_argument("--arch", help="architecture string or published name (e.g. DARTS_V2)")
    t.add_argument("--dataset",
                   help="the --run's, else digits (bundled); mnist, cifar10, image-folder, arrays; ptb, text-folder "
                        "for rnn and nasrnn; segmentation: digits-seg (bundled), cityscapes, voc, seg-folder "
                        "(nas options lists them all)")
    t.add_argument("--data", dest="data_path", help="the dataset's files (default: the --run's)")
    t.add_argument("--dataset-option", dest="dataset_options", action="append", type=key_value, default=[],
                   metavar="KEY=VALUE", help="dataset option, over the --run's (repeatable; nas options --dataset "
                                             "NAME lists them)")
    t.add_argument("--out", required=True, help="output directory: checkpoint.pt and result.json")
    t.add_argument("--resume", action="store_true", help="continue the interrupted training in --out")
    t.add_argument("--seed", type=int, default=0, help="training seed (with --seeds: the first)")
    t.add_argument("--seeds", type=int, default=1,
                   help="train N times (seeds --seed .. --seed+N-1, each in OUT/seed-S/) and report the mean and "
                        "standard deviation of the test accuracy, as DARTS' final evaluation does")
    t.add_argument("--bf16", action="store_true", help="mixed precision on CUDA: bf16 where the GPU has it, else fp16 "
                                                      "with a gradient scaler (default: fp32, as DARTS trains)")
    for flag, kind in (("--epochs", int), ("--batch-size", int), ("--channels", int), ("--layers", int),
                       ("--lr", float), ("--auxiliary-weight", float), ("--drop-path", float), ("--cutout", int),
                       ("--max-train-batches-per-epoch", int), ("--bptt", int), ("--asgd-nonmono", int)):
        t.add_argument(flag, type=kind, help="overrides the space's evaluation recipe")
    t.add_argument("--drop-path-schedule", choices=("darts", "nasnet"),
                   help="darts (default): every cell's drop-path probability ramped per epoch; nasnet: NASNet's "
                        "ScheduledDropPath, ramped per step and scaled by the cell's depth")
    t.add_argument("--num-threads", type=int, help="torch intra-op threads (default: the CPUs this process may use)")
    t.add_argument("--device", help="auto (default), cpu or cuda")
    t.add_argument("--json", action="store_true", help="print result.json at the end")


def _export_arguments(e: argparse.ArgumentParser) -> None:
    e.add_argument("source", help="a run directory (its best), an architecture string or a published name")
    e.add_argument("--space", help="search space (not needed for a run directory)")
    e.add_argument("--format", default="json", help="json (the architecture and preprocessing, no weights), "
                                                    "torch-export or onnx (pip install 'raynas[onnx]')")
    e.add_argument("--out", required=True, help="file to write")
    e.add_argument("--checkpoint", help="a nas train output (directory or checkpoint.pt): export its weights")


def _usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: a container's or a job's share), not the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _source_data(source: str) -> dict[str, Any]:
    """The dataset, data path and dataset options of a search's run directory (spec.json) or of a
    nas train output (result.json)."""
    from raynas.controller.runtime.rundir import RunDirectory
    from raynas.controller.runtime.spec import SearchSpec

    run = RunDirectory(source)
    if (run.path / "spec.json").is_file():
        spec = SearchSpec.from_dict(run.spec(), source="spec")
        return {"dataset": spec.dataset, "data_path": spec.data_path, "dataset_options": spec.dataset_options}
    trained = json.loads((run.path / "result.json").read_text())
    return {"dataset": trained["dataset"], "data_path": trained.get("data_path"),
            "dataset_options": trained.get("dataset_options", {})}


def _data_of(args: argparse.Namespace) -> dict[str, Any]:
    """The data to train on: the flags', over the --run's unless --dataset names another dataset,
    whose path and options the run's would not fit."""
    given = {"dataset": args.dataset or "digits", "data_path": args.data_path,
             "dataset_options": dict(args.dataset_options)}
    if not args.run:
        return given
    ran = _source_data(args.run)
    if args.dataset not in (None, ran["dataset"]):
        return given
    return {"dataset": ran["dataset"], "data_path": args.data_path or ran["data_path"],
            "dataset_options": {**ran["dataset_options"], **given["dataset_options"]}}


def cmd_train(args: argparse.Namespace) -> int:
    from raynas.common import ConfigError
    from raynas.workers.datasets import load_dataset
    from raynas.workers.retrain import recipe, resolve_source, retrain, retrain_seeds

    if args.seeds < 1:
        raise ConfigError("seeds", f"must be a positive number of runs, got {args.seeds}")
    space, arch = resolve_source(args.run or args.arch, args.space)
    source = _data_of(args)
    config = recipe(space, source["dataset"], epochs=args.epochs, batch_size=args.batch_size, channels=args.channels,
                    layers=args.layers, lr=args.lr, auxiliary_weight=args.auxiliary_weight,
                    drop_path=args.drop_path,
                    drop_path_schedule=args.drop_path_schedule, cutout=args.cutout, device=args.device,
                    max_train_batches_per_epoch=args.max_train_batches_per_epoch,
                    num_threads=_usable_cpus() if args.num_threads is None else args.num_threads,
                    bptt=args.bptt, asgd_nonmono=args.asgd_nonmono, autocast=True if args.bf16 else None)
    # The split's seed stays the first training seed's whatever the number of runs.
    dataset = load_dataset(source["dataset"], source["data_path"], seed=args.seed, **source["dataset_options"])
    data_source = {"data_path": source["data_path"], "dataset_options": source["dataset_options"]}
    where = f" ({source['data_path']})" if source["data_path"] else ""
    threads = f"{config.num_threads} thread{'s' * (config.num_threads != 1)}"
    print(f"training {space} {arch} on {source['dataset']}{where} for {config.epochs} epochs"
          f"{f' x {args.seeds} seeds' if args.seeds > 1 else ''} with {threads} -> {args.out}", file=sys.stderr)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if args.seeds > 1:
        seeds = list(range(args.seed, args.seed + args.seeds))
        result = retrain_seeds(space, arch, dataset, config, args.out, seeds, resume=args.resume, log=log,
                               data_source=data_source)
    else:
        result = retrain(space, arch, dataset, config, args.out, seed=args.seed, resume=args.resume, log=log,
                         data_source=data_source)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True, default=str))
    elif result["state"] != "done":
        print(f"training failed: {result['reason']}")
    else:
        metric, name = ("test_ppl", "perplexity") if "test_ppl" in result else (
            "test_acc", "mIoU" if result.get("metric") == "miou" else "accuracy")
        spread = f" +- {result[f'{metric}_std']:.4f} over {args.seeds} seeds" if args.seeds > 1 else ""
        print(f"{result['test_split']} {name} {result[metric]:.4f}{spread} ({result['params']:,} params); "
              f"{args.out}/result.json")
    return 0 if result["state"] == "done" else 1


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from raynas.workers.export import export
    from raynas.workers.retrain import resolve_source

    space, arch = resolve_source(args.source, args.space)
    # A nas train output carries its own weights.
    checkpoint = args.checkpoint or (args.source if Path(args.source, "checkpoint.pt").is_file() else None)
    info = export(space, arch, args.format, args.out, checkpoint=checkpoint)
    print(f"{info['format']}: {space} {info['arch']} ({info['params']:,} params) -> {info['out']}")
    print(f"weights: {info['weights']}")
    if "description" in info:
        print(f"inputs, outputs and preprocessing: {info['description']}")
    return 0


#: name -> (help, arguments, run), as controller/cli/main.py reads them.
COMMANDS = {
    "train": ("retrain an architecture from scratch with its evaluation recipe", _train_arguments, cmd_train),
    "export": ("write an architecture (json) or a deployable model that takes raw images (torch-export, onnx), "
               "described in OUT.json", _export_arguments, cmd_export),
}
