"""``transferlab serve``: the winner behind HTTP (Starlette on uvicorn), with a page to try it.

    POST /predict    images as multipart files (any field name) or JSON {"images": [base64, ...]}
                     (or {"image": base64}; data URLs too) -> {"predictions": [...]} per image: label
                     (or "unknown"), calibrated probability, top classes, unknown-input score and
                     threshold; ``?top_k=3``, ``?explain=1`` adds a Grad-CAM overlay (PyTorch only)
    GET  /model      the model card as JSON
    GET  /health     {"status": "ok", ...}
    GET  /           the page: drop images or use the webcam

Requests are micro-batched (``inference.batching``). Every bad request is a 4xx JSON error
(``{"error": ...}``), checked before anything large is decoded: the body's size (``max_upload_mb``),
the number of images (``max_images``) and each image's pixels from its header (``max_pixels``). The
server never reads a path it is sent. It listens on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from ..data.imagecache import cache_side
from ..data.images import to_rgb
from .backends import model_card_of, square
from .batching import MicroBatcher
from .page import PAGE

UNKNOWN = "unknown"


@dataclass(frozen=True)
class Limits:
    """What one request may hold."""

    max_upload_mb: float = 20.0
    max_images: int = 64
    max_pixels: int = 40_000_000  # per image, read from its header before it is decoded
    max_explain: int = 4  # Grad-CAM overlays per request


class BadRequest(Exception):
    """A request refused with a 4xx status and a sentence."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it passes ``limit`` bytes: a 100 MB upload is never held."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"the request is {int(declared) / 2**20:.1f} MB; at most {limit / 2**20:.0f} MB")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, f"the request is over {limit / 2**20:.0f} MB")
        chunks.append(chunk)
    return b"".join(chunks)


def _from_base64(text: Any, where: str) -> bytes:
    if not isinstance(text, str):
        raise BadRequest(400, f"{where} is not a base64 string")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        looks_like_path = "/" in text[:256] and len(text) < 4096 or text.startswith(("~", "."))
        raise BadRequest(400, f"{where} is not base64 image data" +
                         (": send the image's bytes, not a path (the server never reads its own files)"
                          if looks_like_path else "")) from None


async def _json_images(body: bytes) -> list[tuple[str, bytes]]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(400, "the body is not valid JSON") from None
    if not isinstance(doc, dict) or not ({"images", "image"} & set(doc)):
        raise BadRequest(400, 'send {"images": [base64, ...]} or {"image": base64}')
    items = doc.get("images", [doc.get("image")])
    if not isinstance(items, list):
        raise BadRequest(400, '"images" must be a list of base64 strings')
    return [(f"images[{k}]", _from_base64(v, f"images[{k}]")) for k, v in enumerate(items)]


async def _form_images(request: Request, body: bytes, limits: Limits) -> list[tuple[str, bytes]]:
    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=limits.max_images + 1,
                                                         max_fields=limits.max_images + 16)
    except Exception as exc:  # noqa: BLE001 - a malformed multipart body, whatever the parser says
        raise BadRequest(400, f"the multipart body cannot be read ({getattr(exc, 'detail', exc)})") from None
    found = []
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            found.append((value.filename or key, await value.read()))
        elif key in ("image", "images", "file", "files"):
            raise BadRequest(400, f"field {key!r} holds text, not a file: send the image's bytes as a file upload "
                             "(the server never reads a path it is sent)")
    return found


def _decode(name: str, data: bytes, limits: Limits, side: int) -> Image.Image:
    """An RGB image from uploaded bytes; its size is checked from the header before any pixel is decoded."""
    if not data:
        raise BadRequest(400, f"{name} is empty")
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            if w * h > limits.max_pixels:
                raise BadRequest(413, f"{name} is {w} x {h} pixels; at most {limits.max_pixels / 1e6:.0f} megapixels")
            img.draft("RGB", (side, side))  # as predict decodes a file: big JPEGs at 1/2 .. 1/8 scale
            img.load()
            return to_rgb(img)
    except BadRequest:
        raise
    except Image.DecompressionBombError:
        raise BadRequest(413, f"{name} declares too many pixels to decode safely") from None
    except Exception:  # noqa: BLE001 - text, truncated or corrupt files: all are "not an image"
        raise BadRequest(415, f"{name} is not a readable image (JPEG, PNG, WebP, BMP, GIF ...)") from None


def _options(request: Request, classes: int) -> tuple[int, bool]:
    """``top_k`` (1..classes) and ``explain`` from the query string."""
    try:
        top_k = int(request.query_params.get("top_k", 3))
    except ValueError:
        raise BadRequest(400, "top_k must be a whole number") from None
    return max(1, min(top_k, classes)), request.query_params.get("explain", "0") not in ("0", "", "false")


async def _request_squares(request: Request, limits: Limits, cfg: dict[str, Any]) -> list[np.ndarray]:
    """The images of a request as the squares ``predict`` makes; every problem is a ``BadRequest``."""
    body = await _read_body(request, int(limits.max_upload_mb * 2**20))
    if not body:
        raise BadRequest(400, "the request has no body: send images as multipart files or JSON base64")
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data"):
        blobs = await _form_images(request, body, limits)
    elif kind.startswith("application/json") or body[:1] in (b"{", b"["):
        blobs = await _json_images(body)
    else:
        raise BadRequest(415, f"content type {kind or 'none'!r}: send multipart/form-data or application/json")
    if not blobs:
        raise BadRequest(400, "the request holds no image")
    if len(blobs) > limits.max_images:
        raise BadRequest(413, f"{len(blobs)} images in one request; at most {limits.max_images}")
    side = cache_side(cfg)
    return await run_in_threadpool(lambda: [square(_decode(n, b, limits, side), cfg) for n, b in blobs])


def _answers(probs: np.ndarray, scores: np.ndarray, threshold: float, classes: list[str],
             top_k: int) -> list[dict[str, Any]]:
    finite = bool(np.isfinite(threshold))
    rows = []
    for p, s in zip(probs, scores):
        order = np.argsort(-p, kind="stable")[:top_k]
        unknown = finite and float(s) > threshold
        rows.append({"label": UNKNOWN if unknown else classes[order[0]], "prob": float(p[order[0]]),
                     "nearest": classes[order[0]], "unknown": unknown,
                     "top": [{"label": classes[i], "prob": float(p[i])} for i in order],
                     "unknown_score": round(float(s), 4), "threshold": round(threshold, 4) if finite else None})
    return rows


async def _explain(batcher: MicroBatcher, backend, squares: list[np.ndarray], answers: list[dict]) -> None:
    """Add each answer's Grad-CAM overlay (for its most probable class), computed in the model thread."""
    targets = np.array([backend.classes.index(a["nearest"]) for a in answers[:len(squares)]])
    maps = await batcher.run_alone(lambda: backend.explain(squares, targets))
    for a, m in zip(answers, maps):
        a["gradcam"] = m


async def _not_found(request: Request, exc: Exception) -> JSONResponse:
    return _error(getattr(exc, "status_code", 404), getattr(exc, "detail", None) or "not found")


async def _crashed(request: Request, exc: Exception) -> JSONResponse:
    return _error(500, f"the server failed on this request ({type(exc).__name__}); it keeps running")


def make_app(backend, max_batch: int = 8, window_ms: float = 5.0, limits: Limits | None = None,
             executor: ThreadPoolExecutor | None = None) -> Starlette:
    """The ASGI app serving ``backend`` (``inference.backends``); ``max_batch=1`` serves one request at a time.
    ``executor``: the model thread the backend was loaded in (``load_in_model_thread``); without it the
    model runs in a new thread, which is slower per lone image (``batching.model_thread``)."""
    limits = limits or Limits()
    cfg = backend.data_config

    def run(squares: list[np.ndarray]) -> list[tuple[np.ndarray, float]]:
        probs, scores = backend.run(squares)
        return list(zip(probs, scores))

    batcher = MicroBatcher(run, max_batch, window_ms / 1000.0, executor)

    async def predict(request: Request) -> JSONResponse:
        started = time.perf_counter()
        try:
            top_k, explain = _options(request, len(backend.classes))
            squares = await _request_squares(request, limits, cfg)
        except BadRequest as exc:
            return _error(exc.status, exc.message)
        rows = await batcher.submit(squares)
        answers = _answers(np.stack([p for p, _ in rows]), np.array([s for _, s in rows]), backend.threshold,
                           backend.classes, top_k)
        if explain:
            await _explain(batcher, backend, squares[:limits.max_explain], answers)
        return JSONResponse({"predictions": answers, "backend": backend.kind,
                             "seconds": round(time.perf_counter() - started, 4)})

    async def model(request: Request) -> JSONResponse:
        return JSONResponse(await run_in_threadpool(model_card_of, backend))

    async def health(request: Request) -> JSONResponse:
        sizes = batcher.batches
        return JSONResponse({"status": "ok", "backend": backend.kind, "classes": len(backend.classes),
                             "batches": len(sizes), "mean_batch": round(float(np.mean(sizes)), 2) if sizes else None,
                             "model_seconds": round(batcher.busy_s, 3)})

    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(PAGE)

    @asynccontextmanager
    async def lifespan(app: Starlette):
        await batcher.start()
        yield
        await batcher.stop()

    routes = [Route("/predict", predict, methods=["POST"]), Route("/model", model), Route("/health", health),
              Route("/", page)]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={404: _not_found, 405: _not_found, Exception: _crashed})
    app.state.batcher = batcher
    return app


def serve(backend, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 8, window_ms: float = 5.0,
          limits: Limits | None = None, quiet: bool = False, executor: ThreadPoolExecutor | None = None) -> None:
    """Run the server until interrupted."""
    import uvicorn

    uvicorn.run(make_app(backend, max_batch, window_ms, limits, executor), host=host, port=port,
                log_level="warning" if quiet else "info", access_log=not quiet)
