"""Where pretrained weights come from, and whether they are here without a network."""

from __future__ import annotations

import socket
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from ..core.errors import BackboneError


class DownloadNeeded(BackboneError):
    """The weights of ``name`` must be downloaded from ``host``, and the host cannot be reached."""

    def __init__(self, name: str, host: str):
        super().__init__(f"the pretrained weights of {name!r} need a download from {host}, and there is no network")
        self.name, self.host = name, host


@cache
def reachable(host: str, timeout: float = 3.0) -> bool:
    """Whether ``host`` answers on port 443 (checked once per process)."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def require_download(name: str, host: str) -> None:
    """Raise ``DownloadNeeded`` when ``host`` cannot be reached."""
    if not reachable(host):
        raise DownloadNeeded(name, host)


def hub_file_cached(url: str) -> bool:
    """Whether torch.hub has already downloaded ``url``."""
    return (Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name).is_file()


def timm_weights_cached(cfg: Any) -> bool:
    """Whether the weights of a timm pretrained config are in the Hugging Face or torch.hub cache."""
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = hub_id.partition("@")
        for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
            if isinstance(try_to_load_from_cache(repo, filename, revision=revision or None), str):
                return True
    url = getattr(cfg, "url", None)
    return bool(url) and hub_file_cached(url)


def tv_weights(arch: str) -> Any:
    """The default weights enum entry of a torchvision model (no download)."""
    from torchvision.models import get_model_weights

    return get_model_weights(arch).DEFAULT
