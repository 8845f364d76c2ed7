"""A trained model rebuilt from its folder: ``model.json`` (backbone name, preprocessing, head,
classes) and ``model.safetensors`` (weights), offline (no pretrained weights are fetched)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file

from ..core.errors import DamagedFileError, TransferlabError
from ..core.io import read_json
from .catalog import create_backbone
from .heads import HeadSpec, TransferModel


def rebuild_model(folder: Path, fix: str = "") -> tuple[TransferModel, dict[str, Any]]:
    """The model saved in ``folder`` (eval mode, CPU) and its ``model.json``; ``fix`` is what an error
    about a missing or damaged file tells the user to do."""
    info = read_json(folder / "model.json", fix)
    cfg = info["data_config"]
    bb = create_backbone(info["backbone"], pretrained=False, image_size=cfg["input_size"][-1])
    bb.data_config = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
    model = TransferModel(bb, info["num_classes"], HeadSpec.from_dict(info["head"]))
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise TransferlabError(f"{weights} is missing; {fix}")
    try:
        model.load_state_dict(load_file(weights))
    except (SafetensorError, RuntimeError) as exc:
        raise DamagedFileError(weights, str(exc).splitlines()[0], fix) from None
    return model.eval(), info
