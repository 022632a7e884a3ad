"""The `nas` command line."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Collection, Sequence
from pathlib import Path

from raynas.common import ConfigError, NasError
from raynas.controller.cli import model, service


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (exit 2), like every other bad input."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(commands: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The `nas` parser, with the arguments of `commands` only when given (all by default). A
    command's arguments may import what they describe (the spec's flags list the plug-in registries,
    which import torch): `nas --help` and the client commands build only theirs, and start fast."""
    parser = _Parser(prog="nas", description="Distributed, asynchronous neural architecture search.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (help_text, arguments, _) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if commands is None or name in commands:
            arguments(p)
    return parser


def _search_arguments(s: argparse.ArgumentParser) -> None:
    from raynas.controller.cli.flags import add_spec_arguments

    add_spec_arguments(s)
    s.add_argument("--address",
                   help="Ray cluster to join: auto, or ray://HOST:PORT (default: an embedded single-node Ray)")
    s.add_argument("--resume", metavar="DIR", help="continue the stopped or crashed search in DIR")
    s.add_argument("--out", help="run directory (default runs/<space>-<strategy>-<time>)")
    s.add_argument("--quiet", action="store_true", help="no progress output")
    s.add_argument("--json", action="store_true", help="print result.json to stdout at the end")


def _inspect_arguments(i: argparse.ArgumentParser) -> None:
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


def _counts(text: str) -> list[int]:
    try:
        return [int(n) for n in text.split(",") if n]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected counts separated by commas (100,300), got {text!r}") from None


def _bench_arguments(b: argparse.ArgumentParser) -> None:
    from raynas.controller.cli.flags import key_value

    b.add_argument("benchmark", choices=["nb201"])
    b.add_argument("--strategy", required=True, help="a strategy, or several separated by commas (one table)")
    b.add_argument("--evaluations", type=int, default=100)
    b.add_argument("--at", type=_counts, default=[], metavar="N,N",
                   help="also report the choice after the first N evaluations")
    b.add_argument("--seeds", type=int, default=100)
    b.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    b.add_argument("--jobs", type=int, default=1,
                   help="run the seeds in this many processes (the same figures as one process; set "
                        "OMP_NUM_THREADS=1 beside them)")
    b.add_argument("--dataset", default="cifar10", help="cifar10, cifar100 or imagenet16, or several, comma-separated")
    b.add_argument("--strategy-option", action="append", type=key_value, default=[], metavar="KEY=VALUE",
                   help="with several strategies, STRATEGY.KEY=VALUE sets an option of that one only")
    b.add_argument("--controllers", type=int,
                   help="run rl as the asynchronous distributed scheme with K replicas, in simulated time")
    b.add_argument("--children", type=int, default=8, help="m children per replica step (with --controllers)")
    b.add_argument("--ps-shards", type=int, default=1, help="S parameter shards (with --controllers)")
    b.add_argument("--workers", type=int,
                   help="W workers (with --controllers; default one per child): fewer share one queue; without "
                   "--controllers, W asynchronous workers for the proposer loop on a virtual clock")
    b.add_argument("--replica-batch", default="rolling",
                   help="with --controllers: rolling (the default, as nas search: each replica keeps its m workers "
                        "busy) or barrier (the paper's: a replica waits for all m)")
    b.add_argument("--plot", metavar="FILE.svg",
                   help="anytime figure (mean best so far against evaluations, every strategy) as SVG or PNG; with "
                        "several datasets one file each, named FILE-DATASET.svg")
    b.add_argument("--json", action="store_true")


def _options_arguments(o: argparse.ArgumentParser) -> None:
    o.add_argument("--space", help="describe this search space")
    o.add_argument("--strategy", help="describe this strategy and its options (--strategy-option)")
    o.add_argument("--evaluator", help="describe this evaluator and its options (--evaluator-option)")
    o.add_argument("--dataset", help="describe this dataset and its options (--dataset-option)")
    o.add_argument("--bounds", action="store_true", help="every bounded option as a Markdown table")


def _results_arguments(r: argparse.ArgumentParser) -> None:
    r.add_argument("run", help="the search's run directory")
    r.add_argument("--format", default="table", help="table (default), csv or json")
    r.add_argument("--sort", choices=["best", "order"], default="best",
                   help="best first (budget reached, then reward; the default) or in the order recorded")
    r.add_argument("--top", type=int, help="only the first N rows")


def _plot_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories, drawn on one figure")
    p.add_argument("--out", default="anytime.svg", help="the figure: FILE.svg or FILE.png (default anytime.svg)")
    p.add_argument("--x", default="evaluations", choices=["evaluations", "time"],
                   help="best so far against evaluations finished (default) or seconds since each search started")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _stop_on_sigterm() -> None:
    """What Kubernetes, `ray job stop`, systemd and `kill` send: stop as gracefully as Ctrl-C does."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


def cmd_search(args: argparse.Namespace) -> int:
    from raynas.controller.runtime.job import SearchJob
    from raynas.controller.runtime.plan import LOCAL, SCHEME
    from raynas.controller.runtime.progress import evaluations_line

    _stop_on_sigterm()

    from raynas.controller.cli.flags import spec_data_from_args, spec_from_args

    if args.resume:
        out = args.resume
        _check_unfinished(out)
        job = SearchJob.resume_from(out, spec_data_from_args(args), address=args.address, progress=not args.quiet)
        spec = job.spec
    else:
        from raynas.controller.runtime.plan import check_scheme_fields

        spec = spec_from_args(args)
        out = args.out or f"runs/{spec.space}-{spec.strategy}-{time.strftime('%Y%m%d-%H%M%S')}"
        job = SearchJob(spec, out, address=args.address, progress=not args.quiet)
        check_scheme_fields(job.plan, spec_data_from_args(args))
    if not args.quiet:
        scheme = (f"K={spec.controllers} controllers x m={spec.children} children, S={spec.ps_shards} shards, "
                  if job.plan.path == SCHEME else "")
        where = "in this process" if job.plan.path == LOCAL else f"{scheme}{spec.workers} workers on Ray"
        print(f"{'resuming' if args.resume else 'searching'} {spec.space} with {spec.strategy} "
              f"({spec.evaluator} evaluator, {spec.evaluations} evaluations, seed {spec.seed}; {where}) -> {out}",
              file=sys.stderr)
    result = job.run()
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        best = result["best"]
        print(f"best reward {best['reward']:.4f}: {best['arch']}" if best else "no evaluation succeeded")
        counts = evaluations_line(result["evaluations"], result["failed"], result["evaluations_this_run"],
                                  result["wall_time_s"])
        print(f"{counts}; results in {out}/result.json")
    if result["state"] == "stopped":
        print(f"stopped; continue with: nas search --resume {out}", file=sys.stderr)
        return 130
    return 0


def _check_unfinished(out: str) -> None:
    """Refuse to resume a search that spent its budget: there is nothing left to run, and running it
    would only replay its log and overwrite its result."""
    from raynas.controller.runtime.rundir import RESULT, RunDirectory

    if not (Path(out) / RESULT).is_file():
        return
    result = RunDirectory(out).result()
    if result.get("evaluations", 0) >= result.get("budget", float("inf")):
        raise ConfigError("resume", f"the search in {out} is complete ({result['evaluations']} of its "
                          f"{result['budget']} evaluations); there is nothing to resume",
                          f"nas results {out} for its evaluations, or a new search with another --out")


def cmd_inspect(args: argparse.Namespace) -> int:
    from raynas.workers.describe import inspect_arch

    if args.supernet:
        from raynas.workers.oneshot import describe_supernet

        # The autodeeplab space has one search, Auto-DeepLab's, whatever --algorithm says.
        algorithm = "autodeeplab" if args.space == "autodeeplab" else args.algorithm
        report = {"space": args.space, "algorithm": algorithm, **describe_supernet(
            args.space, args.channels, args.layers, args.num_classes, args.in_channels, args.algorithm,
            args.vocab_size)}
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print(f"{args.space} supernet ({algorithm}): {report['params']:,} network parameters, "
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
        if report["published_params_M"]:
            print(f"published: {report['published_params_M']} M (as counted in its paper)")
        if report["params_auxiliary"]:
            print(f"params of the auxiliary head (not counted above): {report['params_auxiliary']:,}")
        print(f"FLOPs (multiply-adds, one input): {report['flops']:,} ({report['flops'] / 1e6:.2f} M)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from raynas.controller.bench.nb201 import bench_nb201, compare_nb201, format_bench, format_compare, write_plots
    from raynas.controller.runtime.plot import figure_path
    from raynas.controller.runtime.progress import Progress

    _stop_on_sigterm()
    strategies, datasets = args.strategy.split(","), args.dataset.split(",")
    settings = dict(seeds=args.seeds, first_seed=args.first_seed, controllers=args.controllers,
                    children=args.children, ps_shards=args.ps_shards, workers=args.workers,
                    batching=args.replica_batch, at=args.at, jobs=args.jobs,
                    progress=Progress(args.seeds * len(strategies) * len(datasets)))
    if args.plot:
        figure_path(args.plot, "plot")
    if len(strategies) == 1 and len(datasets) == 1:
        results = [bench_nb201(args.strategy, args.evaluations, dataset=args.dataset,
                               strategy_options=dict(args.strategy_option), **settings)]
        print(json.dumps(results[0], indent=2) if args.json else format_bench(results[0]))
    else:
        results = compare_nb201(strategies, datasets, args.evaluations,
                                strategy_options=dict(args.strategy_option), **settings)
        print(json.dumps(results, indent=2) if args.json else format_compare(results))
    for path in write_plots(results, args.plot) if args.plot else []:
        print(f"wrote {path}", file=sys.stderr)
    return 0


def cmd_options(args: argparse.Namespace) -> int:
    from raynas.controller.runtime import catalogue

    if args.bounds:
        print(catalogue.bounds_table())
        return 0
    asked = [(kind, getattr(args, kind)) for kind in catalogue.KINDS if getattr(args, kind)]
    print("\n\n".join(catalogue.describe(kind, name) for kind, name in asked) if asked else catalogue.overview())
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from raynas.controller.runtime import results

    table = results.rows(args.run)
    if args.sort == "best":
        table = results.best_first(table)
    if args.top is not None:
        if args.top < 1:
            raise ConfigError("top", f"must be a positive number of rows, got {args.top}")
        table = table[:args.top]
    sys.stdout.write(results.render(table, args.format))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from raynas.controller.runtime.plot import anytime_figure

    path = anytime_figure(args.runs, args.x).save(args.out)
    print(f"wrote {path}")
    return 0


#: Every subcommand: name -> (help, arguments, run), in the order `nas --help` lists them.
COMMANDS = {
    "search": ("run a search in this process and write a run directory", _search_arguments, cmd_search),
    "inspect": ("describe an architecture: drawing, parameters, FLOPs", _inspect_arguments, cmd_inspect),
    "bench": ("benchmarks against published results", _bench_arguments, cmd_bench),
    "options": ("list the search spaces, strategies, evaluators and datasets, or describe one with its options",
                _options_arguments, cmd_options),
    "results": ("a search's evaluations as a table, CSV or JSON lines", _results_arguments, cmd_results),
    "plot": ("anytime curves: best so far of several runs against evaluations or time, as SVG or PNG",
             _plot_arguments, cmd_plot),
    **model.COMMANDS,
    **service.COMMANDS,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # The search's flags list the registered plug-ins, which import torch: seconds before anything
    # else can be said. A terminal sees what is happening at once; the line goes again before the
    # flags are read, so a bad flag is still one line.
    loading = argv[:1] == ["search"] and not {"-h", "--help", "--quiet"} & set(argv) and sys.stderr.isatty()
    if loading:
        sys.stderr.write("nas search: loading torch and the registered spaces, strategies and evaluators ...")
        sys.stderr.flush()
    parser = build_parser(argv[:1])
    if loading:
        sys.stderr.write("\r\x1b[2K")
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command][2](args)
    except NasError as exc:
        print(f"nas {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nas {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (nas watch | head): stop quietly, and keep Python's flush at exit from
        # failing on the closed pipe as well.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
