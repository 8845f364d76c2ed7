"""The inputs of a comparison (``Experiment``: data, training settings, the plan) and their one
loader, which reads a config.yaml for ``--config``, ``--resume`` and ``export`` alike."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..core.config import SettingError, Settings, from_dict, option
from ..core.errors import DamagedFileError, TransferlabError
from ..train.config import DataConfig, TrainConfig
from ..train.strategies import list_strategies

DEFAULT_STRATEGIES = ("scratch", "features", "probe", "finetune", "chain-thaw")
ENSEMBLE = "ensemble"  # not a strategy: the weighted average of the others' probabilities


@dataclass(frozen=True)
class CompareConfig(Settings):
    """compare: which strategies, with how many seeds each"""

    strategies: tuple[str, ...] = option(DEFAULT_STRATEGIES, "comma-separated strategies (see transferlab "
                                                             "strategies); 'ensemble' averages the others",
                                         required=True)
    seeds: int = option(1, "seeds per strategy (0..N-1)", minimum=1, maximum=1000)

    def check(self) -> None:
        known = (*list_strategies(), ENSEMBLE)
        unknown = [s for s in self.strategies if s not in known]
        if unknown:
            raise SettingError("strategies", f"unknown strategy {', '.join(map(repr, unknown))}; known: "
                               f"{', '.join(list_strategies())}, and {ENSEMBLE} (of the others)", "--strategies")
        if len(set(self.strategies)) < len(self.strategies):
            raise SettingError("strategies", "a strategy is named twice", "--strategies")
        if ENSEMBLE in self.strategies and len(set(self.strategies) - {ENSEMBLE}) < 2:
            raise SettingError("strategies", f"{ENSEMBLE} averages the other strategies of a compare: name at "
                               "least two more", "--strategies")


@dataclass(frozen=True)
class Experiment(Settings):
    """The inputs of a comparison: what config.yaml records."""

    data: DataConfig
    train: TrainConfig = TrainConfig()
    compare: CompareConfig = CompareConfig()


def read_config_yaml(path: Path) -> dict[str, Any]:
    """The parsed content of a config.yaml (a mapping), or a ``DamagedFileError``."""
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DamagedFileError(path, f"not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(saved, dict):
        raise DamagedFileError(path, "not a transferlab config.yaml (not a mapping of settings)")
    return saved


def load_experiment(path: str | Path) -> Experiment:
    """An Experiment read back from a config.yaml; a refused value names the file and its key."""
    path = Path(path)
    if not path.is_file():
        raise TransferlabError(f"{path} does not exist; pass the config.yaml of a results directory")
    try:
        return from_dict(Experiment, read_config_yaml(path))
    except SettingError as exc:  # a value outside its type, choices or limits (say, edited by hand)
        raise TransferlabError(f"{path}: key {exc.setting}: {exc.problem}; edit the file") from None
