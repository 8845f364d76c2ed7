"""Backbones by name: build one, list them, and read what a backbone is without loading its weights.

``backbone_spec`` answers the questions that need no weights (layer group names, preprocessing,
feature width, published ImageNet figures), as timm's ``pretrained_cfg`` does: the network is built
on PyTorch's ``meta`` device, which allocates no memory and loads nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

import torch

from ..core.errors import BackboneError
from . import weights
from .backbone import BACKBONES, DEFAULT_BACKBONE, Backbone
from .builders import KNOWN_META, PREFIXES, tv_meta
from .lite_weights import lite_weights_path

# Backbones listed by ``transferlab backbones`` besides the registered names.
SUGGESTED = ["timm:mobilenetv3_large_100", "timm:resnet50", "tv:resnet50", "tv:vgg19",
             "timm:inception_resnet_v2"]
WeightsStatus = Literal["offline", "download", "none"]


def _build(name: str, pretrained: bool) -> Backbone:
    prefix, sep, arch = name.partition(":")
    if sep:
        if prefix not in PREFIXES:
            raise BackboneError(f"unknown backbone prefix {prefix!r} in {name!r}; use timm: or tv:")
        return PREFIXES[prefix](arch, pretrained=pretrained)
    return BACKBONES.get(name)(pretrained=pretrained)


def _with_size(data_config: dict[str, Any], image_size: int | None) -> dict[str, Any]:
    if image_size is None:
        return data_config
    return {**data_config, "input_size": (3, image_size, image_size)}


def create_backbone(name: str = DEFAULT_BACKBONE, pretrained: bool = True,
                    image_size: int | None = None) -> Backbone:
    """Build a backbone by name.

    Args:
        name: a registered name (``efficientnet_lite0``) or ``timm:<arch>`` / ``tv:<arch>``.
        pretrained: load ImageNet weights (offline for the Lite models; otherwise from the cache
            or the network, with a clear error when neither has them).
        image_size: input resolution to use instead of the weights' native one.
    """
    try:
        backbone = _build(name, pretrained)
    except weights.DownloadNeeded as exc:
        offline = [n for n in list_backbones() if weights_status(n) == "offline"]
        raise BackboneError(f"{exc}. Backbones with weights available offline: {', '.join(offline)}. "
                            "Or run where the network is reachable once: the weights are cached "
                            "after the first download") from None
    backbone.data_config = _with_size(backbone.data_config, image_size)
    backbone.meta.setdefault("params_m", round(sum(p.numel() for p in backbone.model.parameters()) / 1e6, 1))
    return backbone


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone is, known without its weights.

    Attributes:
        name: the backbone's name.
        groups: layer group names, input to output.
        data_config: preprocessing (``input_size``, ``mean``, ``std``, ``interpolation``, ``crop_pct``).
        num_features: width of the pooled features.
        meta: ImageNet top-1, parameters (M), GMACs where published.
        sequential: whether the groups run one by one (the engine can cache any group's input).
    """

    name: str
    groups: tuple[str, ...]
    data_config: dict[str, Any]
    num_features: int
    meta: dict[str, Any]
    sequential: bool


@cache
def _spec(name: str) -> BackboneSpec:
    with torch.device("meta"):
        bb = create_backbone(name, pretrained=False)
    meta = {k: bb.meta.get(k) for k in ("top1", "params_m", "gmacs")}
    return BackboneSpec(name, tuple(g.name for g in bb.groups), bb.data_config, bb.num_features, meta,
                        bb.sequential)


def backbone_spec(name: str = DEFAULT_BACKBONE, image_size: int | None = None) -> BackboneSpec:
    """The spec of ``name`` (at ``image_size`` when given), without building real weights."""
    spec = _spec(name)
    if image_size is None:
        return spec
    return BackboneSpec(spec.name, spec.groups, _with_size(spec.data_config, image_size), spec.num_features,
                        spec.meta, spec.sequential)


def list_backbones() -> list[str]:
    """Registered names plus suggested timm/torchvision names."""
    return BACKBONES.names() + SUGGESTED


def weights_status(name: str) -> WeightsStatus:
    """``offline`` (loadable without a network), ``download`` (needs one) or ``none`` (random init only)."""
    kind, sep, arch = name.partition(":")
    if not sep:
        info = BACKBONES.info(name)
        if not info.get("pretrained", True):
            return "none"
        if "lite" in info:
            return "offline" if lite_weights_path(info["lite"]) is not None else "download"
        return "offline"
    if kind == "timm":
        import timm

        return "offline" if weights.timm_weights_cached(timm.models.get_pretrained_cfg(arch)) else "download"
    if kind == "tv":
        return "offline" if weights.hub_file_cached(weights.tv_weights(arch).url) else "download"
    raise BackboneError(f"unknown backbone prefix {kind!r} in {name!r}; use timm: or tv:")


def weights_offline(name: str) -> bool:
    """Whether the pretrained weights of ``name`` can be loaded without a network."""
    return weights_status(name) == "offline"


def backbone_info(name: str) -> dict[str, Any]:
    """Metadata of a backbone without building it: top-1, params, GMACs, where its weights are."""
    info: dict[str, Any] = {"name": name, **KNOWN_META.get(name, {})}
    if name.startswith("tv:"):
        info |= tv_meta(weights.tv_weights(name[3:]))
    status = weights_status(name)
    return info | {"weights": status, "offline": status == "offline"}


__all__ = ["BackboneSpec", "backbone_info", "backbone_spec", "create_backbone", "list_backbones",
           "weights_offline", "weights_status"]
