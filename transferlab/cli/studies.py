"""``transferlab sweep`` and ``transferability``: the classic studies, each a (data, config, out) run."""

from __future__ import annotations

import argparse

from ..core.config import flatten
from ..experiments.sweep import SweepConfig, sweep
from ..experiments.transferability import DEFAULT_CONFIG, TransferabilityConfig, transferability
from ..train.config import BudgetConfig, DataConfig, ModelConfig, RuntimeConfig, TrainConfig
from .common import out
from .options import add_config_options, add_output_options, config_from_args

# The sweep trains many networks: a small input and short schedules keep it to minutes on a CPU.
SWEEP_DEFAULTS = {"image_size": 32, "max_epochs": 6, "patience": 3}


def run_sweep(args: argparse.Namespace) -> None:
    """Test accuracy against examples per class, pretrained against scratch."""
    res = sweep(config_from_args(DataConfig, args), config_from_args(TrainConfig, args), args.out,
                config_from_args(SweepConfig, args), quiet=args.quiet)
    if res["capped"]:
        out.print(f"sizes {res['capped']} exceed the smallest class and were capped")
    out.print(f"results and report: {args.out}", markup=False, highlight=False)


def run_transferability(args: argparse.Namespace) -> None:
    """Yosinski et al.'s AnB / BnB networks for each cut."""
    res = transferability(config_from_args(DataConfig, args), config_from_args(TrainConfig, args), args.out,
                          config_from_args(TransferabilityConfig, args), quiet=args.quiet)
    out.print(f"done in {res['seconds']:.0f} s; results and report: {args.out}", markup=False, highlight=False)


def register(sub: argparse._SubParsersAction) -> None:
    """Add sweep and transferability."""
    s = sub.add_parser("sweep", help="test accuracy against examples per class (nested subsets)")
    add_config_options(s, DataConfig)
    add_config_options(s, TrainConfig, SWEEP_DEFAULTS)
    add_config_options(s, SweepConfig)
    add_output_options(s, "results directory", out_default="runs/sweep")
    s.set_defaults(handler=run_sweep, subparser=s)

    t = sub.add_parser("transferability", help="layer transferability: AnB / BnB (Yosinski et al. 2014)")
    add_config_options(t, DataConfig, skip=("unlabelled",))
    # The study trains its own networks: only the model, budget and runtime settings apply.
    for section in (ModelConfig, BudgetConfig, RuntimeConfig):
        add_config_options(t, section, flatten(DEFAULT_CONFIG))
    add_config_options(t, TransferabilityConfig)
    add_output_options(t, "results directory", out_default="runs/transferability")
    t.set_defaults(handler=run_transferability, subparser=t)
