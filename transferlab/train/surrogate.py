"""Surrogate pretraining: a self-supervised task on the training and pool images without their labels,
learnt by the body before the finetune recipe runs on the labelled images (the ``surrogate``
strategies).

Objectives (``OBJECTIVES``):
- ``exemplar`` (Dosovitskiy et al. 2014, "pseudo classes from augmented data"): every image is a
  class of its own and its augmented views are that class's examples; a cosine classifier over the
  images on the pooled features.
- ``simclr`` (Chen et al. 2020): two views of each image, a projection MLP and the NT-Xent loss over
  the batch (a view's positive is the other view of its image; the other views are its negatives).

The views are random resized crops (area 0.2-1) and flips at low resolution (``--surrogate-size``)
with colour distortion (brightness, contrast, saturation, grayscale), cut from the image cache on
the model's device. Afterwards the BatchNorm statistics are estimated again on centre crops at the
model's own resolution, the one the labelled phases see.

The body learnt depends only on the images, the backbone, its start (random or ImageNet) and these
settings (the seed is fixed), not on any label or run, so it is cached on disk and shared by every
run (strategy, seed, subset of labels) that needs it. It checkpoints after every epoch, so a killed
pretraining resumes where it stopped; a second process waits for the first instead of repeating it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ..core.errors import TransferlabError
from ..core.io import atomic_path, folder_lock, read_json, write_json
from ..core.paths import cache_home
from ..core.progress import progress_bar
from ..core.registry import Registry
from ..data.imagestore import ImageStore
from ..data.transforms import as_tensor, crop_params, eval_batch, normalise, resized_crops
from ..models.catalog import create_backbone
from ..runtime.device import Precision, to_device

SEED = 0  # one body per setting, whatever the seed of the runs that share it
CROP_SCALE = (0.2, 1.0)  # SimCLR's crops go down to 8% of the area; 20% keeps some object on 2,000-odd images
TEMPERATURE = 0.2  # NT-Xent and exemplar: Chen et al. (2020) find 0.1-0.5 best; lower suits small batches
BN_IMAGES = 1024  # images whose centre crops re-estimate the BatchNorm statistics at the model's resolution
MAX_EXEMPLARS = 50_000  # one class per image: the classifier's weights grow with the images


@dataclass(frozen=True)
class SurrogateSettings:
    """What decides the pretrained body (with the images): the part of the cache key that is settings.

    Attributes:
        objective: a name in ``OBJECTIVES``.
        backbone: the backbone's name; ``pretrained``: start from its ImageNet weights (else random).
        size: side of the views, in pixels.
        epochs: passes over the images (planned; fewer when ``minutes`` would not hold them).
        minutes: training time the pretraining may take, across resumes.
        lr: AdamW's peak rate (a linear warm-up over the first epoch, then half a cosine).
        batch_size: images per step (``simclr``: twice as many views).
    """

    objective: str = "exemplar"
    backbone: str = "efficientnet_lite0"
    pretrained: bool = False
    size: int = 64
    epochs: int = 40
    minutes: float = 8.0
    lr: float = 2e-3
    batch_size: int = 64


@dataclass
class SurrogateInfo:
    """What a pretraining did (info.json beside the cached body).

    Attributes:
        epochs: epochs trained; ``planned``: the plan after the first epoch's time was known.
        seconds: training time in all; ``losses``: the mean loss of every epoch.
        images: images it learnt from; ``cut``: stopped by the time budget before the plan's end.
    """

    epochs: int = 0
    planned: int = 0
    seconds: float = 0.0
    images: int = 0
    losses: list[float] = field(default_factory=list)
    cut: bool = False


# ---------------------------------------------------------------------------------------------- views

def colour_distort(x: torch.Tensor, generator: torch.Generator, strength: float = 0.5) -> torch.Tensor:
    """SimCLR's colour distortion on a float NCHW batch in 0..255, per image: with probability 0.8
    brightness, contrast and saturation each scaled by a factor in [1 - 0.8 s, 1 + 0.8 s]; with
    probability 0.2 grayscale. Hue is left alone: it tells flowers apart (and is costly on a CPU). Draws
    come from ``generator``."""
    n, device = len(x), x.device
    u = to_device(torch.rand(n, 5, generator=generator), device)
    jitter = (u[:, 0] < 0.8).view(-1, 1, 1, 1)
    factors = 1 + 0.8 * strength * (2 * u[:, 1:4] - 1)
    weights = torch.tensor([0.299, 0.587, 0.114], device=device).view(1, 3, 1, 1)

    def gray(t: torch.Tensor) -> torch.Tensor:
        return (t * weights).sum(1, keepdim=True)

    y = x * factors[:, 0].view(-1, 1, 1, 1)
    mean = gray(y).mean((2, 3), keepdim=True)
    y = mean + (y - mean) * factors[:, 1].view(-1, 1, 1, 1)
    g = gray(y)
    y = g + (y - g) * factors[:, 2].view(-1, 1, 1, 1)
    x = torch.where(jitter, y, x)
    return torch.where((u[:, 4] < 0.2).view(-1, 1, 1, 1), gray(x).expand_as(x), x).clamp_(0, 255)


def surrogate_views(images: torch.Tensor, data_config: dict, size: int, generator: torch.Generator) -> torch.Tensor:
    """One random view of each cached uint8 square: crop, flip, colour distortion, normalised."""
    x = as_tensor(images)
    boxes, flips = crop_params(torch.rand(len(x), 5, generator=generator), x.shape[1], CROP_SCALE)
    return normalise(colour_distort(resized_crops(x, boxes, flips, size), generator), data_config)


# ----------------------------------------------------------------------------------------- objectives

class Contrastive(nn.Module):
    """SimCLR: a projection MLP and the NT-Xent loss of two views per image."""

    def __init__(self, features: int, images: int, dim: int = 128):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(features, 512), nn.ReLU(inplace=True), nn.Linear(512, dim))

    def forward(self, f1: torch.Tensor, f2: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.project(torch.cat([f1, f2])), dim=1)
        n = len(f1)
        sim = (z @ z.T) / TEMPERATURE
        sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
        target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
        return F.cross_entropy(sim, target)


class Exemplar(nn.Module):
    """Exemplar classes: a cosine classifier with one class per image, both views its examples."""

    def __init__(self, features: int, images: int):
        super().__init__()
        if images > MAX_EXEMPLARS:
            raise TransferlabError(f"the exemplar objective keeps one class per image, and {images} images is more "
                                   f"than {MAX_EXEMPLARS}: pass --surrogate-objective simclr")
        self.classes = nn.Parameter(F.normalize(torch.randn(images, features), dim=1))

    def forward(self, f1: torch.Tensor, f2: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        w = F.normalize(self.classes, dim=1)
        logits = F.normalize(torch.cat([f1, f2]), dim=1) @ w.T / TEMPERATURE
        return F.cross_entropy(logits, torch.cat([index, index]))


OBJECTIVES: Registry[Callable[[int, int], nn.Module]] = Registry("surrogate objective", TransferlabError)
OBJECTIVES.register("simclr")(Contrastive)
OBJECTIVES.register("exemplar")(Exemplar)


# ----------------------------------------------------------------------------------------------- cache

def images_digest(images: ImageStore, indices: np.ndarray) -> str:
    """A digest of the decoded images ``indices`` as a set: the same images in any order, or split
    another way between labelled and pool, give the same digest (and share a body)."""
    rows = sorted(hashlib.sha1(np.ascontiguousarray(images.cache[i]).tobytes()).digest() for i in indices)
    return hashlib.sha256(b"".join(rows)).hexdigest()[:16]


def _code_digest() -> str:
    from .features import extraction_code

    return hashlib.sha256(Path(__file__).read_bytes() + extraction_code().encode()).hexdigest()[:12]


def body_folder(settings: SurrogateSettings, digest: str, data_config: dict) -> Path:
    """Where the body pretrained with ``settings`` on the images of ``digest`` is kept."""
    key = json.dumps({**asdict(settings), "images": digest, "code": _code_digest(), "seed": SEED,
                      "mean": list(data_config["mean"]), "std": list(data_config["std"])}, sort_keys=True)
    return cache_home() / "surrogate" / hashlib.sha256(key.encode()).hexdigest()[:24]


# -------------------------------------------------------------------------------------------- training

def _rate(step: int, steps_per_epoch: int, epochs: int, lr: float) -> float:
    """A linear warm-up over the first epoch, then half a cosine down to 0 at the end of the plan."""
    warm = steps_per_epoch
    if step < warm:
        return lr * (step + 1) / warm
    return 0.5 * lr * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, epochs * steps_per_epoch - warm))))


@torch.no_grad()
def recalibrate_batchnorm(body: nn.Module, images: ImageStore, indices: np.ndarray, data_config: dict,
                          precision: Precision, batch_size: int = 64) -> None:
    """BatchNorm running statistics estimated anew (a cumulative mean) on the evaluation centre crops of
    ``indices``: the pretraining's statistics are those of small, colour-distorted views."""
    norms = [m for m in body.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    body.train()
    for s in range(0, len(indices), batch_size):
        with precision.autocast():
            body.forward_features(precision.to_input(eval_batch(images.gather(indices[s:s + batch_size]), data_config)))
    for m, mom in zip(norms, saved):
        m.momentum = mom
    body.eval()


def _epoch(learner: tuple[nn.Module, nn.Module, torch.optim.Optimizer], images: ImageStore,
           settings: SurrogateSettings, data_config: dict, precision: Precision, epoch: int, plan: int) -> float:
    """One pass of ``learner`` (body, task, optimizer) over the shrunk squares ``images`` in a seeded
    order; returns the mean loss."""
    body, task, opt = learner
    gen = torch.Generator().manual_seed(SEED * 1_000_003 + epoch)
    order = torch.randperm(len(images.cache), generator=gen).numpy()  # positions in ``images``
    b = settings.batch_size
    steps = max(1, len(order) // b)  # the last, short batch is dropped: a contrastive batch of 1 is no task
    losses = []
    for s in range(steps):
        lr = _rate(epoch * steps + s, steps, plan, settings.lr)
        for g in opt.param_groups:
            g["lr"] = lr
        chunk = order[s * b:(s + 1) * b]
        raw = images.gather(chunk)
        v1, v2 = (surrogate_views(raw, data_config, settings.size, gen) for _ in range(2))
        with precision.autocast():
            f = body.forward_head(body.forward_features(precision.to_input(torch.cat([v1, v2]))), pre_logits=True)
        f = f.float()
        position = to_device(torch.as_tensor(chunk), f.device)
        loss = task(f[:len(chunk)], f[len(chunk):], position)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return float(np.mean(losses))


def shrunk_store(images: ImageStore, indices: np.ndarray, side: int, batch_size: int = 256) -> ImageStore:
    """The images ``indices`` shrunk (antialiased) to ``side`` pixels, in memory (on a GPU, resident when it fits):
    crops of small views from the full squares cost a resampling of many source pixels per view pixel
    (a quarter of a CPU epoch at 48 px), from squares twice the view's side only a few."""
    out = []
    for s in range(0, len(indices), batch_size):
        x = images.gather(indices[s:s + batch_size]).permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
        out.append(x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
    return ImageStore(np.concatenate(out), images.device)


def _load_checkpoint(path: Path, body: nn.Module, task: nn.Module, opt: torch.optim.Optimizer) -> SurrogateInfo:
    """The state of an interrupted pretraining loaded into ``body``, ``task`` and ``opt``; a fresh info
    when there is none (or it cannot be read: it starts again)."""
    if not path.is_file():
        return SurrogateInfo()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        body.load_state_dict(state["body"])
        task.load_state_dict(state["task"])
        opt.load_state_dict(state["opt"])
        return SurrogateInfo(**state["info"])
    except Exception:  # noqa: BLE001 - a damaged or foreign checkpoint is only lost work
        return SurrogateInfo()


def _train(folder: Path, settings: SurrogateSettings, images: ImageStore, indices: np.ndarray, data_config: dict,
           precision: Precision, quiet: bool) -> tuple[dict[str, torch.Tensor], SurrogateInfo]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        backbone = create_backbone(settings.backbone, pretrained=settings.pretrained)
        task = OBJECTIVES.get(settings.objective)(backbone.num_features, len(indices))
    body = precision.to_model(backbone.model)
    task.to(precision.device)
    opt = torch.optim.AdamW([*body.parameters(), *task.parameters()], lr=settings.lr, weight_decay=1e-4)
    checkpoint = folder / "checkpoint.pt"
    info = _load_checkpoint(checkpoint, body, task, opt)
    info.images, budget = len(indices), settings.minutes * 60
    small = shrunk_store(images, indices, 2 * settings.size)
    body.train()
    what = f"surrogate {settings.objective} ({'ImageNet' if settings.pretrained else 'random'} start, " \
           f"{settings.size} px, {len(indices)} images)"
    with progress_bar(what, info.planned or settings.epochs, quiet, status=True) as bar:
        bar.advance(info.epochs)
        while info.epochs < (info.planned or settings.epochs):
            t0 = time.perf_counter()
            loss = _epoch((body, task, opt), small, settings, data_config, precision, info.epochs,
                          info.planned or settings.epochs)
            info.seconds += time.perf_counter() - t0
            info.epochs += 1
            info.losses.append(round(loss, 4))
            if not info.planned:  # the plan fits the budget, so the schedule ends where training does
                info.planned = max(1, min(settings.epochs, int(budget // (info.seconds / info.epochs))))
                info.cut = info.planned < settings.epochs
                bar.update(total=info.planned)
            with atomic_path(checkpoint) as tmp:
                torch.save({"body": body.state_dict(), "task": task.state_dict(), "opt": opt.state_dict(),
                            "info": asdict(info)}, tmp)
            bar.advance(1, info=f"loss {loss:.3f}")
            if info.seconds >= budget and info.epochs < info.planned:  # a slower machine than the first epoch said
                info.cut, info.planned = True, info.epochs
    spread = np.random.default_rng(SEED).permutation(indices)[:BN_IMAGES]
    recalibrate_batchnorm(body, images, np.sort(spread), data_config, precision)
    return {k: v.detach().cpu().contiguous() for k, v in body.state_dict().items()}, info


def pretrained_body(settings: SurrogateSettings, images: ImageStore, indices: np.ndarray, data_config: dict,
                    precision: Precision, quiet: bool = True) -> tuple[dict[str, torch.Tensor], SurrogateInfo, bool]:
    """The body's state after surrogate pretraining on the images ``indices``, its ``SurrogateInfo``, and
    whether it came from the cache. Trained (or resumed) and cached on first use."""
    indices = np.unique(np.asarray(indices))
    if len(indices) < 2:
        raise TransferlabError("surrogate pretraining needs at least 2 images")
    OBJECTIVES.get(settings.objective)  # an unknown name fails before any work
    folder = body_folder(settings, images_digest(images, indices), data_config)
    weights, record = folder / "body.safetensors", folder / "info.json"
    with folder_lock(folder, wait=True, what="surrogate pretraining"):
        with contextlib.suppress(Exception):  # a damaged cache entry is trained again
            if weights.is_file() and record.is_file():
                return load_file(str(weights)), SurrogateInfo(**read_json(record)), True
        state, info = _train(folder, settings, images, indices, data_config, precision, quiet)
        with atomic_path(weights) as tmp:
            save_file(state, str(tmp))
        write_json(record, asdict(info))
        (folder / "checkpoint.pt").unlink(missing_ok=True)
    return state, info, False
