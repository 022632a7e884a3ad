"""The `nas` command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Sequence

from search_spaces import ConfigError, NasError

from .spec import SearchSpec, load_config


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (exit 2), like every other bad input."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def add_spec_arguments(p: argparse.ArgumentParser) -> None:
    """The SearchSpec flags, shared by `nas search` (local) and `nas submit` (service)."""
    p.add_argument("--config", help="spec file (.json or .toml) with SearchSpec fields; flags override it")
    p.add_argument("--space", help="search space: nb201, darts, nasnet, macro, rnn (default macro)")
    p.add_argument("--strategy", help="random, evolution, rl (default), or one-shot: darts, darts2 (second order), "
                                      "noisy-darts; one-shot options via --strategy-option (epochs=, channels=, ...)")
    p.add_argument("--evaluator", help="train (train each child) or table (NAS-Bench-201 lookup)")
    p.add_argument("--dataset", help="digits (default, bundled), mnist, cifar10, ptb")
    p.add_argument("--data", dest="data_path", help="path to the dataset's files (mnist, cifar10, ptb)")
    p.add_argument("--evaluations", type=int, help="number of architectures to evaluate (default 24)")
    p.add_argument("--epochs", type=int, help="training epochs per child")
    p.add_argument("--batch-size", type=int, help="training batch size per child")
    p.add_argument("--channels", type=int, help="child network width (initial channels)")
    p.add_argument("--layers", type=int, help="child network depth (cells per stage for nb201, cells for darts)")
    p.add_argument("--seed", type=int, help="seed of the whole search (default 0)")
    p.add_argument("--runtime", help="ray (default: the distributed scheme) or local (one process, one child at a time)")
    p.add_argument("--controllers", type=int, help="K controller replicas (rl; the paper used 100; default 2)")
    p.add_argument("--children", type=int, help="m children sampled per replica step (the paper: 8; default 4)")
    p.add_argument("--ps-shards", type=int, help="S parameter-server shards (the paper: 20; default 2)")
    p.add_argument("--workers", type=int, help="W worker actors that evaluate children (default 2)")
    p.add_argument("--cpus-per-child", type=float, help="CPUs reserved per worker (fractions allowed; default 1)")
    p.add_argument("--gpus-per-child", type=float, help="GPUs reserved per worker (fractions allowed; default 0)")
    p.add_argument("--max-retries", type=int, help="re-sends of an evaluation whose worker died (default 2)")
    p.add_argument("--ps-accumulate", type=int, help="gradients a shard accumulates per update (default 1)")
    p.add_argument("--staleness-policy", help="none, drop or scale: what shards do with stale gradients")
    p.add_argument("--max-staleness", type=int, help="staleness bound in versions (drop/scale)")
    p.add_argument("--max-wall-time", dest="max_wall_time_s", type=float, help="time budget in seconds")
    p.add_argument("--space-option", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                   help="search-space option, e.g. num_layers=8 for macro (repeatable)")
    p.add_argument("--strategy-option", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                   help="strategy option, e.g. lr=0.001 or batch_size=8 for rl (repeatable)")
    p.add_argument("--train-option", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                   help="child-training option, e.g. lr=0.05 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nas", description="Distributed, asynchronous neural architecture search.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("search", help="run a search in this process and write a run directory")
    add_spec_arguments(s)
    s.add_argument("--address", help="Ray cluster to join: auto, or ray://HOST:PORT (default: an embedded single-node Ray)")
    s.add_argument("--resume", metavar="DIR", help="continue the stopped or crashed search in DIR")
    s.add_argument("--out", help="run directory (default runs/<space>-<strategy>-<time>)")
    s.add_argument("--quiet", action="store_true", help="no progress output")
    s.add_argument("--json", action="store_true", help="print result.json to stdout at the end")

    i = sub.add_parser("inspect", help="describe an architecture: drawing, parameters, FLOPs")
    i.add_argument("--space", required=True)
    i.add_argument("--arch", help="architecture string, or a published name such as DARTS_V2")
    i.add_argument("--supernet", action="store_true",
                   help="describe the space's one-shot supernet instead: network and architecture parameters")
    i.add_argument("--algorithm", default="darts", help="with --supernet: darts, darts2 or noisy-darts (no `none` op)")
    i.add_argument("--channels", type=int, help="initial channels (space default if omitted)")
    i.add_argument("--layers", type=int, help="depth (space default if omitted)")
    i.add_argument("--auxiliary", action="store_true", help="add the auxiliary head (counted separately)")
    i.add_argument("--num-classes", type=int, default=10)
    i.add_argument("--in-channels", type=int, default=3)
    i.add_argument("--image-size", type=int, default=32)
    i.add_argument("--vocab-size", type=int, default=10000, help="language models (rnn) only")
    i.add_argument("--json", action="store_true")

    b = sub.add_parser("bench", help="benchmarks against published results")
    b.add_argument("benchmark", choices=["nb201"])
    b.add_argument("--strategy", required=True)
    b.add_argument("--evaluations", type=int, default=100)
    b.add_argument("--seeds", type=int, default=100)
    b.add_argument("--dataset", default="cifar10", help="cifar10, cifar100 or imagenet16")
    b.add_argument("--strategy-option", action="append", type=_key_value, default=[], metavar="KEY=VALUE")
    b.add_argument("--controllers", type=int,
                   help="run rl as the asynchronous distributed scheme with K replicas, in simulated time")
    b.add_argument("--children", type=int, default=8, help="m children per replica step (with --controllers)")
    b.add_argument("--ps-shards", type=int, default=1, help="S parameter shards (with --controllers)")
    b.add_argument("--json", action="store_true")

    from . import model_cli, service_cli

    COMMANDS.update(model_cli.add_parsers(sub))
    COMMANDS.update(service_cli.add_parsers(sub))
    return parser


def spec_from_args(args: argparse.Namespace) -> SearchSpec:
    return SearchSpec.from_dict(spec_data_from_args(args), source="config" if args.config else "spec").validate()


def spec_data_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The spec fields the config file and flags set (the rest keep SearchSpec's defaults)."""
    data: dict[str, Any] = load_config(args.config) if args.config else {}
    for name in ("space", "strategy", "evaluator", "dataset", "data_path", "evaluations", "seed", "runtime",
                 "controllers", "children", "ps_shards", "workers", "cpus_per_child", "gpus_per_child",
                 "max_retries", "ps_accumulate", "staleness_policy", "max_staleness", "max_wall_time_s"):
        value = getattr(args, name)
        if value is not None:
            data[name] = value
    if data.get("evaluator") == "table":
        # The only tabulated space; no reason to make the user say it.
        data.setdefault("space", "nb201")
    train = dict(data.get("train", {}))
    for flag, key in (("epochs", "epochs"), ("batch_size", "batch_size"), ("channels", "channels"), ("layers", "layers")):
        if getattr(args, flag) is not None:
            train[key] = getattr(args, flag)
    train.update(dict(args.train_option))
    if train:
        data["train"] = train
    for option, key in (("space_option", "space_options"), ("strategy_option", "strategy_options")):
        if getattr(args, option):
            data[key] = {**data.get(key, {}), **dict(getattr(args, option))}
    return data


def cmd_search(args: argparse.Namespace) -> int:
    from .job import SearchJob

    if args.resume:
        out = args.resume
        job = SearchJob.resume_from(out, address=args.address, progress=not args.quiet)
        spec = job.spec
    else:
        spec = spec_from_args(args)
        out = args.out or f"runs/{spec.space}-{spec.strategy}-{time.strftime('%Y%m%d-%H%M%S')}"
        job = SearchJob(spec, out, address=args.address, progress=not args.quiet)
    if not args.quiet:
        scheme = (f"K={spec.controllers} controllers x m={spec.children} children, S={spec.ps_shards} shards, "
                  if spec.runtime == "ray" and spec.strategy == "rl" else "")
        where = f"{scheme}{spec.workers} workers on Ray" if spec.runtime == "ray" else "in this process"
        print(f"{'resuming' if args.resume else 'searching'} {spec.space} with {spec.strategy} "
              f"({spec.evaluator} evaluator, {spec.evaluations} evaluations, seed {spec.seed}; {where}) -> {out}",
              file=sys.stderr)
    result = job.run()
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        best = result["best"]
        print(f"best reward {best['reward']:.4f}: {best['arch']}" if best else "no evaluation succeeded")
        print(f"{result['evaluations']} evaluations ({result['failed']} failed) in {result['wall_time_s']:.1f} s; "
              f"results in {out}/result.json")
    if result["state"] == "stopped":
        print(f"stopped; continue with: nas search --resume {out}", file=sys.stderr)
        return 130
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from .describe import inspect_arch

    if args.supernet:
        from workers.oneshot import describe_supernet

        report = {"space": args.space, "algorithm": args.algorithm, **describe_supernet(
            args.space, args.channels, args.layers, args.num_classes, args.in_channels, args.algorithm)}
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print(f"{args.space} supernet ({args.algorithm}): {report['params']:,} network parameters, "
                  f"{report['arch_params']:,} architecture parameters")
        return 0
    if not args.arch:
        raise ConfigError("arch", "nas inspect needs --arch (or --supernet)")

    report = inspect_arch(
        args.space, args.arch, channels=args.channels, layers=args.layers, auxiliary=args.auxiliary,
        num_classes=args.num_classes, in_channels=args.in_channels, image_size=args.image_size,
        vocab_size=args.vocab_size,
    )
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k != "drawing"}, indent=2))
    else:
        print(f"space: {report['space']}\narch:  {report['arch']}\n")
        print(report["drawing"])
        print(f"\nparams: {report['params']:,} ({report['params'] / 1e6:.3f} M)")
        if report["params_auxiliary"]:
            print(f"params of the auxiliary head (not counted above): {report['params_auxiliary']:,}")
        print(f"FLOPs (multiply-adds, one input): {report['flops']:,} ({report['flops'] / 1e6:.2f} M)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import bench_nb201, format_bench

    result = bench_nb201(args.strategy, args.evaluations, args.seeds, dataset=args.dataset,
                         strategy_options=dict(args.strategy_option), controllers=args.controllers,
                         children=args.children, ps_shards=args.ps_shards)
    print(json.dumps(result, indent=2) if args.json else format_bench(result))
    return 0


COMMANDS = {"search": cmd_search, "inspect": cmd_inspect, "bench": cmd_bench}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except NasError as exc:
        print(f"nas {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nas {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
