"""A trained model rebuilt from its folder: ``model.json`` (backbone name, preprocessing, head,
classes) and ``model.safetensors`` (weights), offline (no pretrained weights are fetched)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file

from ..core.errors import DamagedFileError, TransferlabError
from ..core.layout import RunFolder
from ..core.records import RecordError, read_record
from .catalog import create_backbone
from .heads import HeadSpec, TransferModel


@dataclass
class SavedHead:
    hidden: list[int]
    dropout: float


@dataclass
class SavedModel:
    """model.json: enough to rebuild a trained model offline."""

    backbone: str
    data_config: dict[str, Any]  # the preprocessing it was trained with (the backbone's, at the run's size)
    num_classes: int
    head: SavedHead
    classes: list[str]
    strategy: str = ""
    seed: int = 0

    def check(self) -> None:
        cfg = self.data_config
        size, mean, std = cfg.get("input_size"), cfg.get("mean"), cfg.get("std")
        if not (isinstance(size, list) and len(size) == 3 and all(isinstance(v, int) and v > 0 for v in size)
                and all(isinstance(v, list) and len(v) == size[0] and all(isinstance(x, (int, float)) for x in v)
                        for v in (mean, std)) and min(std) > 0):
            raise RecordError("data_config", "not a preprocessing (input_size, mean, std) of images")
        if self.num_classes < 2 or len(self.classes) != self.num_classes:
            raise RecordError("classes", f"{len(self.classes)} class names for {self.num_classes} classes")


def rebuild_model(folder: Path, fix: str = "") -> tuple[TransferModel, dict[str, Any]]:
    """The model saved in ``folder`` (eval mode, CPU) and its ``model.json``; ``fix`` is what an error
    about a missing or damaged file tells the user to do."""
    run = RunFolder(folder)
    if not run.model.is_file():
        raise TransferlabError(f"{run.model} is missing; {fix}")
    saved = read_record(SavedModel, run.model, fix)
    info = dataclasses.asdict(saved)
    cfg = info["data_config"]
    bb = create_backbone(info["backbone"], pretrained=False, image_size=cfg["input_size"][-1])
    bb.data_config = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
    model = TransferModel(bb, info["num_classes"], HeadSpec.from_dict(info["head"]))
    weights = run.weights
    if not weights.is_file():
        raise TransferlabError(f"{weights} is missing; {fix}")
    try:
        model.load_state_dict(load_file(weights))
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise DamagedFileError(weights, str(exc).splitlines()[0], fix) from None
    return model.eval(), info
