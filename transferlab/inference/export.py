"""Export a run's model to ONNX or TorchScript: a file that computes what ``predict`` computes.

The exported graph takes pixels, not tensors a user has to normalise: uint8 RGB crops (N, S, S, 3),
made from an image exactly as ``predict`` makes them (the centre square of the short side, resized to
the run's side, then the centre S x S crop; ``predict_with_onnx.py`` beside the export shows how).
It returns three outputs:

- ``probabilities``: calibrated class probabilities (the run's temperature and the softmax inside);
- ``logits``: the raw class scores;
- ``unknown_score``: the unknown-input score of ``train.novelty`` (the training features travel inside
  the graph); above the sidecar's ``unknown.threshold`` the answer is "unknown".

Every export is checked against ``predict`` on real images of the run (probabilities within 1e-4) and
refused otherwise. ``int8=True`` also writes a statically quantized ONNX model (onnxruntime, calibrated
on training images), whose test accuracy is measured against the fp32 export's and refused beyond a
1-point drop.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.errors import TransferlabError
from ..core.io import atomic_path, write_json, write_text
from ..core.layout import ResultsFolder, RunFolder
from ..data.builtin import load_dataset
from ..data.imagecache import build_image_cache, cache_side
from ..experiments.experiment import load_experiment
from ..models.heads import TransferModel
from ..train.novelty import UnknownRule, distance_rows
from .classify import pixels
from .predict import Predictor

PARITY_TOLERANCE = 1e-4  # on probabilities, against predict
INT8_MAX_DROP = 0.01  # the int8 model may lose at most this much test accuracy
CALIBRATION_IMAGES = 128
OUTPUTS = ["probabilities", "logits", "unknown_score"]


class PixelClassifier(nn.Module):
    """uint8 RGB crops (N, S, S, 3) -> calibrated probabilities, logits and the unknown-input score: what
    an exported file computes."""

    def __init__(self, model: TransferModel, data_config: dict[str, Any], temperature: float = 1.0,
                 rule: UnknownRule | None = None, train_features: torch.Tensor | None = None):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(data_config["mean"]).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(data_config["std"]).view(1, 3, 1, 1) * 255.0)
        self.temperature = float(temperature)
        self.rule = rule
        use_distance = rule is not None and rule.distance_mean is not None and train_features is not None
        # As predict measures it: the stored unit rows as they are (fp16, not normalised again).
        self.register_buffer("train_rows", train_features.float() if use_distance else None)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = (image.permute(0, 3, 1, 2).float() - self.mean) / self.std
        feats = self.model.features(x)
        logits = self.model.head(feats)
        probs = (logits / self.temperature).softmax(-1)
        if self.rule is None:
            return probs, logits, torch.zeros_like(probs[:, 0])
        r = self.rule
        score = ((1.0 - probs.max(1).values) - r.confidence_mean) / r.confidence_std
        if self.train_rows is not None:
            distance = 1.0 - (distance_rows(feats, r.feature_power) @ self.train_rows.T).max(1).values
            score = score + (distance - r.distance_mean) / r.distance_std
        return probs, logits, score


@dataclass
class Exported:
    """What an export wrote and measured."""

    path: Path
    max_abs_diff: float  # on probabilities, against predict
    int8_path: Path | None = None
    table: list[dict[str, Any]] = field(default_factory=list)  # per model: size, latency, test accuracy


def _run_data(info: dict[str, Any]) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
    """The run's images as cached squares and its splits (labels and indices), or None when the data can
    no longer be read (moved, or a results folder copied elsewhere)."""
    if not info.get("run_dir"):
        return None
    results = ResultsFolder(Path(info["run_dir"]))
    try:
        exp = load_experiment(results.config)  # the one loader of --config too
        ds = load_dataset(exp.data.source, strict=exp.data.strict, exclude=exp.data.exclude)
        cfg = info["data_config"]
        squares = build_image_cache(ds, cache_side(cfg), cfg["interpolation"], quiet=True)
        with np.load(results.splits) as f:
            splits = {k: f[k] for k in f.files}
    except Exception:  # noqa: BLE001 - any failure means the same thing here: the data is not at hand
        return None
    return squares, splits


def _sample_images(data: tuple[np.ndarray, dict] | None, data_config: dict, n: int = 8) -> list[np.ndarray]:
    """A few of the run's test images (cached squares) when the data is at hand, else image-like noise."""
    if data is not None:
        squares, splits = data
        idx = splits.get("test", np.arange(len(squares)))
        return [squares[i] for i in idx[np.linspace(0, len(idx) - 1, min(n, len(idx))).astype(int)]]
    side = cache_side(data_config)
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(n)]


def _target(out: str | Path | None, default: Path) -> Path:
    """The file to write: ``out`` (its folder made if missing; a folder means a file inside it) or ``default``."""
    if out is None:
        return default
    path = Path(out)
    if path.is_dir():
        return path / default.name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _check_parity(got: np.ndarray, reference: np.ndarray, path: Path) -> float:
    """The largest difference to predict's probabilities; an export that differs more is refused (and not
    written)."""
    diff = float(np.abs(got - reference).max())
    if not diff <= PARITY_TOLERANCE:
        raise TransferlabError(f"the export to {path} differs from predict by {diff:.2e} (> {PARITY_TOLERANCE}); "
                               "it was not written")
    return diff


def _onnxruntime():
    try:
        import onnxruntime as ort
    except ImportError:
        raise TransferlabError("ONNX export needs onnx and onnxruntime: pip install 'transferlab[export]'") from None
    return ort


def _session(path: Path):
    ort = _onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3  # quantized graphs warn about every folded node otherwise
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _write_onnx(wrapper: PixelClassifier, x: torch.Tensor, path: Path) -> None:
    torch.onnx.export(wrapper, (x,), str(path), input_names=["image"], output_names=OUTPUTS,
                      dynamic_axes={name: {0: "batch"} for name in ["image", *OUTPUTS]}, dynamo=False)


class _Calibration:
    """onnxruntime's calibration data reader: batches of training crops."""

    def __init__(self, crops: np.ndarray, batch: int = 16):
        self.batches = iter([crops[s:s + batch] for s in range(0, len(crops), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {"image": batch}


def _crops(squares: np.ndarray, idx: np.ndarray, size: int) -> np.ndarray:
    top = (squares.shape[1] - size) // 2
    return np.stack([squares[i, top:top + size, top:top + size] for i in idx])


def _accuracy(session, crops: np.ndarray, labels: np.ndarray, batch: int = 32) -> float:
    pred = np.concatenate([session.run(["probabilities"], {"image": crops[s:s + batch]})[0].argmax(1)
                           for s in range(0, len(crops), batch)])
    return float((pred == labels).mean())


def _latency_ms(session, crop: np.ndarray, repeats: int = 30) -> float:
    """Median milliseconds for one image (after a warm-up run)."""
    session.run(["probabilities"], {"image": crop[None]})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(["probabilities"], {"image": crop[None]})
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def _float_convolutions(path: Path) -> list[str]:
    """The convolutions of the graph that int8 leaves in float: the first, the last and the depthwise ones."""
    import onnx

    convs = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]
    depthwise = [n.name for n in convs if next((a.i for a in n.attribute if a.name == "group"), 1) > 1]
    return sorted({*depthwise, convs[0].name, convs[-1].name}) if convs else []


def quantize_int8(fp32: Path, path: Path, data: tuple[np.ndarray, dict], size: int) -> list[dict[str, Any]]:
    """Write the int8 model of ``fp32`` (static, QDQ, per-channel weights; calibrated on up to 128
    training images); measure both on the run's test images and refuse the int8 one beyond a 1-point
    drop (see ``_float_convolutions`` for what stays in float). Returns a row per model: file, MB,
    median ms per image, test accuracy."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    squares, splits = data
    rng = np.random.default_rng(0)
    train = splits["train"]
    calib = _crops(squares, np.sort(rng.choice(train, min(CALIBRATION_IMAGES, len(train)), replace=False)), size)
    test = splits["test"]
    test_crops, test_labels = _crops(squares, test, size), splits["labels"][test]
    with atomic_path(path) as tmp:
        prepared = tmp.with_name(tmp.name + ".pre.onnx")
        try:
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
            # Convolutions and the head's Gemm carry nearly all the compute; the distance MatMul stays in
            # float so that the unknown-input score keeps its resolution. Left in float too: the first
            # convolution (raw pixels), the last (the features the head and the distance read) and the
            # depthwise ones, whose per-channel ranges differ most (Sheng et al. 2018, "A quantization-
            # friendly separable convolution for MobileNets"). Measured on flower_photos (lite0
            # finetune): quantizing every convolution lost 4.6 points of test accuracy, this lost 0 to 0.6.
            quantize_static(str(prepared), str(tmp), _Calibration(calib), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=["Conv", "Gemm"], calibrate_method=CalibrationMethod.MinMax,
                            nodes_to_exclude=_float_convolutions(prepared))
        finally:
            prepared.unlink(missing_ok=True)
        rows = []
        for name, file in (("fp32", fp32), ("int8", tmp)):
            session = _session(file)
            rows.append({"model": name, "file": str(path if name == "int8" else fp32),
                         "mb": round(file.stat().st_size / 2**20, 2),
                         "ms_per_image": round(_latency_ms(session, test_crops[0]), 2),
                         "test_acc": round(_accuracy(session, test_crops, test_labels), 4)})
        drop = rows[0]["test_acc"] - rows[1]["test_acc"]
        if drop > INT8_MAX_DROP:
            raise TransferlabError(f"the int8 model's test accuracy is {rows[1]['test_acc']:.1%} against "
                                   f"{rows[0]['test_acc']:.1%} in fp32 (a {drop:.1%} drop, more than "
                                   f"{INT8_MAX_DROP:.0%}); it was not written: use the fp32 export")
    return rows


def export_model(run_dir: str | Path, fmt: str = "onnx", out: str | Path | None = None,
                 strategy: str | None = None, int8: bool = False) -> Exported:
    """Export a run's model (its winner, or ``strategy``'s) and check it against ``predict``.

    Writes the model file, its sidecar (``<file>.json``: classes, preprocessing, temperature, unknown-
    input rule, outputs), ``predict_with_onnx.py`` for ONNX, and MODEL_CARD.md beside them; with
    ``int8`` also ``<name>.int8.onnx``.

    Raises:
        TransferlabError: unknown format, missing onnx packages, parity worse than 1e-4, an ensemble,
            int8 without the run's data, or an int8 model more than one point less accurate.
    """
    if fmt not in ("onnx", "torchscript"):
        raise TransferlabError(f"unknown export format {fmt!r}; use onnx or torchscript")
    if int8 and fmt != "onnx":
        raise TransferlabError("--int8 quantizes the ONNX export; use --format onnx")
    predictor = Predictor(run_dir, strategy)
    if RunFolder(predictor.folder).is_ensemble():
        raise TransferlabError(f"{predictor.folder} is an ensemble of several models, not one model; export a "
                               "member with --strategy")
    (model, info), _ = predictor.models[0]
    cfg = info["data_config"]
    wrapper = PixelClassifier(model, cfg, predictor.temperature, predictor.rule, predictor.train_features).eval()
    data = _run_data(info)
    if int8 and data is None:
        raise TransferlabError("--int8 calibrates on the run's training images and checks its test accuracy, but "
                               "the run's data cannot be read (moved or deleted?); export without --int8")
    samples = _sample_images(data, cfg)
    reference, ref_scores, _ = predictor.unknown_scores(samples)
    x = torch.from_numpy(pixels(samples, cfg))
    folder = Path(info["folder"])
    if fmt == "onnx":
        _onnxruntime()
        path = _target(out, folder / "model.onnx")
        with atomic_path(path) as tmp:
            with torch.no_grad():
                _write_onnx(wrapper, x, tmp)
            probs, _, scores = _session(tmp).run(OUTPUTS, {"image": x.numpy()})
            diff = _check_parity(probs, reference, path)
    else:
        path = _target(out, folder / "model.torchscript.pt")
        with torch.no_grad():
            traced = torch.jit.trace(wrapper, x)
        with atomic_path(path) as tmp:
            traced.save(str(tmp))
            with torch.no_grad():
                probs, _, scores = (t.numpy() for t in torch.jit.load(str(tmp))(x))
            diff = _check_parity(probs, reference, path)
    result = Exported(path, diff)
    if int8:
        result.int8_path = path.with_name(path.name.removesuffix(".onnx") + ".int8.onnx")
        result.table = quantize_int8(path, result.int8_path, data, cfg["input_size"][-1])
    _write_sidecar(path, predictor, info, diff, result)
    if fmt == "onnx":
        write_text(path.parent / "predict_with_onnx.py", EXAMPLE.replace("MODEL_FILE", path.name))
    from ..reporting.model_card import write_model_card

    write_model_card(path.parent, predictor.folder, export=result)
    return result


def _write_sidecar(path: Path, predictor: Predictor, info: dict[str, Any], diff: float, result: Exported) -> None:
    """``<file>.json``: everything a program needs to use the file without transferlab."""
    cfg = info["data_config"]
    rule = predictor.rule
    sidecar = {
        "classes": info["classes"],
        "strategy": info.get("strategy"), "backbone": info.get("backbone"), "model_folder": info["folder"],
        "input": {"name": "image", "shape": ["batch", cfg["input_size"][-1], cfg["input_size"][-1], 3],
                  "dtype": "uint8", "layout": "NHWC, RGB, 0..255"},
        "preprocessing": {"side": cache_side(cfg), "crop": cfg["input_size"][-1],
                          "interpolation": cfg["interpolation"],
                          "steps": "the centre square of the image's short side, resized to side x side, then the "
                                   "centre crop x crop (EXIF orientation applied, transparency on white)",
                          "mean": list(cfg["mean"]), "std": list(cfg["std"]), "normalised_inside": True,
                          "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}},
        "outputs": {"probabilities": "calibrated class probabilities (softmax of logits / temperature)",
                    "logits": "raw class scores", "unknown_score": "higher: less like the training images"},
        "temperature": predictor.temperature,
        "unknown": None if rule is None else {"threshold": rule.threshold, "target_precision": rule.target,
                                              "rule": rule.to_dict()},
        "max_abs_diff_vs_predict": diff,
        "int8": result.table or None,
    }
    for file in filter(None, (path, result.int8_path)):  # the int8 file takes the same pixels, gives the same outputs
        write_json(file.parent / (file.name + ".json"), {**sidecar, "file": file.name})


EXAMPLE = '''"""Label images with the exported model, with onnxruntime, numpy and Pillow only.

    python predict_with_onnx.py photo.jpg [more.jpg ...]
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

HERE = Path(__file__).resolve().parent
MODEL = HERE / "MODEL_FILE"
INFO = json.loads((HERE / "MODEL_FILE.json").read_text())
FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
           "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


def crop(path: str) -> np.ndarray:
    """The (S, S, 3) uint8 crop the model takes: as transferlab's predict makes it."""
    pre = INFO["preprocessing"]
    side, size = pre["side"], pre["crop"]
    with Image.open(path) as img:
        if img.format == "JPEG":
            img.draft("RGB", (side, side))
        img = ImageOps.exif_transpose(img)
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img.convert("RGBA"))
        img = img.convert("RGB")
    w, h = img.size
    s = min(w, h)
    box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
    square = np.asarray(img.resize((side, side), FILTERS.get(pre["interpolation"], Image.Resampling.BICUBIC),
                                   box=box, reducing_gap=3.0))
    top = (side - size) // 2
    return square[top:top + size, top:top + size]


def main(paths: list[str]) -> None:
    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    batch = np.stack([crop(p) for p in paths])
    probs, _, unknown = session.run(["probabilities", "logits", "unknown_score"], {"image": batch})
    threshold = (INFO.get("unknown") or {}).get("threshold", float("inf"))
    for path, p, u in zip(paths, probs, unknown):
        best = int(p.argmax())
        label = "unknown" if u > threshold else INFO["classes"][best]
        print(json.dumps({"file": path, "label": label, "prob": float(p[best]), "nearest": INFO["classes"][best],
                          "unknown_score": float(u)}))


if __name__ == "__main__":
    main(sys.argv[1:])
'''


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """The sidecar JSON of an exported file."""
    path = Path(path)
    side = path.with_name(path.name + ".json")
    if not side.is_file():
        raise TransferlabError(f"{side} is missing: it holds the classes and preprocessing of {path}; export again")
    return json.loads(side.read_text())
