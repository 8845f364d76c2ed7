"""``transferlab compare``, ``train`` and ``demo``: strategies x seeds into a results directory."""

from __future__ import annotations

import argparse
import enum
import time
from pathlib import Path

from ..core.config import flatten
from ..core.layout import ResultsFolder
from ..core.progress import warn
from ..experiments.compare import CompareConfig, compare, load_experiment
from ..reporting.compare_report import next_commands
from ..reporting.mlflow_log import DEFAULT as MLFLOW_DEFAULT
from ..reporting.mlflow_log import mlflow_ui_command, store_uri
from ..runtime.distributed import broadcast, is_main
from ..train.config import DataConfig, TrainConfig
from ..train.strategies import list_strategies
from .common import default_out, numbered_out, out, print_summary
from .options import add_config_options, add_output_options, config_from_args

# The demo: the built-in offline digits, few examples per class (the regime transfer is for), a small
# input size so that all five strategies finish in minutes on a 2-core CPU.
DEMO_DEFAULTS = {"source": "digits:40", "image_size": 64, "max_epochs": 12}


def _add_run_options(p: argparse.ArgumentParser, defaults: dict | None = None, skip: tuple[str, ...] = ()) -> None:
    # The few options a beginner needs come first: the data, the strategies, then the model.
    add_config_options(p, DataConfig, defaults)
    add_config_options(p, CompareConfig, defaults, skip=skip)
    add_config_options(p, TrainConfig, defaults)
    p.add_argument("--config", help="take the settings from a results directory's config.yaml "
                                    "(options given here override them)")
    p.add_argument("--mlflow", nargs="?", const=MLFLOW_DEFAULT, default=None, metavar="URI",
                   help="also log the runs to MLflow: a tracking URI, or nothing for a local store in --out "
                        "(needs pip install 'transferlab[mlflow]')")


def _run(args: argparse.Namespace, plan: CompareConfig, out_dir: str, command: str = "") -> None:
    started = time.time()
    out_dir = broadcast(out_dir)  # a numbered default is picked once, by rank 0 of a torchrun job
    data = config_from_args(DataConfig, args)
    metrics = compare(data, config_from_args(TrainConfig, args), out_dir, plan, resume=args.resume, quiet=args.quiet,
                      command=command, mlflow=args.mlflow)
    print_summary(metrics, out_dir)
    say = lambda text: out.print(text, markup=False, highlight=False)  # noqa: E731
    say(f"curves: tensorboard --logdir {Path(out_dir) / 'tensorboard'}")
    if args.mlflow:
        uri = store_uri(Path(out_dir), args.mlflow)
        local = uri.startswith(("sqlite:", "file:", "/"))
        _log_model(out_dir, args.mlflow)
        say(f"mlflow: {mlflow_ui_command(uri)}" if local else f"mlflow: logged to {uri}")
    folder = ResultsFolder(Path(out_dir))
    took = time.time() - started
    say(f"report: {folder.report_html.resolve()}  (model card: {folder.path.resolve() / 'MODEL_CARD.md'}; "
        f"all of it took {took // 60:.0f} min {took % 60:.0f} s)")
    say("next: " + "  |  ".join(next_commands(out_dir)))


def _log_model(out_dir: str, uri: str) -> None:
    """The winner as an MLflow pyfunc model beside the runs; MLflow's pyfunc needs pandas, and without
    it the runs stay logged, with a warning."""
    if not is_main():
        return
    try:
        from ..inference.mlflow_model import log_winner
    except ImportError as exc:
        warn(f"the winner is not logged as an MLflow model: {exc} (pip install 'transferlab[mlflow]')")
        return
    log_winner(out_dir, uri)


def run_compare(args: argparse.Namespace) -> None:
    """Compare several strategies on the same splits."""
    out_dir = args.out or default_out(config_from_args(DataConfig, args).source, "compare", args.resume)
    _run(args, config_from_args(CompareConfig, args), out_dir)


def run_train(args: argparse.Namespace) -> None:
    """Train one strategy."""
    out_dir = args.out or default_out(config_from_args(DataConfig, args).source, args.strategy, args.resume)
    _run(args, CompareConfig(strategies=(args.strategy,), seeds=args.seeds), out_dir)


def run_demo(args: argparse.Namespace) -> None:
    """Compare every default strategy on the built-in digits (offline, minutes on a CPU)."""
    args.out = args.out or numbered_out("runs/demo", args.resume)
    plan = config_from_args(CompareConfig, args)
    out.print(f"demo: {', '.join(plan.strategies)} on {args.source} (scikit-learn's digits) with {args.backbone} "
              f"at {args.image_size}px -> {args.out}", markup=False, highlight=False)
    _run(args, plan, args.out, command=f"transferlab demo --out {args.out}")


def apply_config_file(args: argparse.Namespace, argv: list[str] | None) -> argparse.Namespace:
    """With ``--config``, parse again with the file's settings as defaults, so given options win."""
    if not getattr(args, "config", None):
        return args
    saved = flatten(load_experiment(args.config))
    # argparse passes a str default through the option's type: an Enum goes in as its text.
    args.subparser.set_defaults(**{k: v.value if isinstance(v, enum.Enum) else v for k, v in saved.items()})
    return args.root_parser.parse_args(argv)


def register(sub: argparse._SubParsersAction) -> None:
    """Add compare, train and demo."""
    c = sub.add_parser("compare", help="train several strategies on the same splits and compare them")
    _add_run_options(c)
    add_output_options(c, "results directory (default runs/<data>-compare)", resume=True)
    c.set_defaults(handler=run_compare, subparser=c)

    t = sub.add_parser("train", help="train one strategy (one seed by default)")
    t.add_argument("--strategy", default="finetune", choices=list_strategies(),
                   help="the strategy to train (see transferlab strategies; default: finetune)")
    _add_run_options(t, skip=("strategies",))
    add_output_options(t, "results directory (default runs/<data>-<strategy>)", resume=True)
    t.set_defaults(handler=run_train, subparser=t)

    d = sub.add_parser("demo", help="compare all strategies on the built-in offline digits (minutes)")
    _add_run_options(d, DEMO_DEFAULTS)
    add_output_options(d, "results directory (default runs/demo, or runs/demo-2 ... if taken)", resume=True)
    d.set_defaults(handler=run_demo, subparser=d)
