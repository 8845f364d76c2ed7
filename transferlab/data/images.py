"""Decoding any image file a user may have into upright 8-bit RGB."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = frozenset(ext.lower() for ext in Image.registered_extensions())
# A user's own photos can be very large (panoramas, scans); Pillow's default bomb guard (~179 MP
# warns, twice that refuses) would reject them. The command line keeps a guard, but a far higher one.
LARGE_IMAGE_PIXELS = 1_000_000_000

ORIENTATION = 0x0112  # the EXIF tag


def allow_large_images(pixels: int = LARGE_IMAGE_PIXELS) -> None:
    """Raise Pillow's decompression-bomb limit to ``pixels`` (process-wide; the CLI calls it)."""
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, pixels)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow image as upright 8-bit RGB: EXIF orientation applied, 16-bit and float scaled,
    transparency composited on white, palette / CMYK / grayscale converted."""
    if img.getexif().get(ORIENTATION, 1) != 1:  # exif_transpose copies even an upright image
        img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I") or img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        # 16-bit data spans 0..65535; other integer or float data is scaled by its own range.
        if img.mode.startswith("I;16") or (a.min() >= 0 and 255 < a.max() <= 65535):
            a = a / 257.0
        elif a.max() > 255 or a.min() < 0 or img.mode == "F":
            a = (a - a.min()) / max(a.max() - a.min(), 1e-12) * 255.0
        img = Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")  # a copy even when RGB already: the caller may close the file's image


def open_rgb(source: str | Path | io.BytesIO, draft_size: int | None = None) -> Image.Image:
    """Decode an image file fully into RGB (raises ``OSError`` / ``ValueError`` if corrupt)."""
    with Image.open(source) as img:
        if draft_size and img.format == "JPEG":
            # Decode big JPEGs at 1/2, 1/4 or 1/8 scale, never below what is needed.
            img.draft("RGB", (draft_size, draft_size))
        img.load()
        return to_rgb(img)


# Formats other than JPEG decode at full size: above this many pixels the image cache alone would
# need gigabytes for one image (a 20000 x 20000 PNG takes 1.2 GB as RGB), so such files are skipped.
MAX_FULL_DECODE_PIXELS = 120_000_000


def check_image(source: str | Path | bytes) -> str | None:
    """Why the image file (or its bytes) is not usable, or None if it decodes. The header is read
    first: a file that is not an image is refused after a few bytes, and a huge one before its pixels."""
    source = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with Image.open(source) as head:
            w, h, fmt = head.width, head.height, head.format
        if fmt != "JPEG" and w * h > MAX_FULL_DECODE_PIXELS:
            return (f"too large to decode here ({w} x {h} = {w * h / 1e6:.0f} MP; formats other than JPEG are "
                    f"decoded whole, and the limit is {MAX_FULL_DECODE_PIXELS / 1e6:.0f} MP): downscale it")
        if isinstance(source, io.BytesIO):
            source.seek(0)
        img = open_rgb(source, draft_size=32)
    except Image.DecompressionBombError as exc:
        return (f"too large to decode safely ({exc}); if the file is trusted, call "
                "transferlab.allow_large_images() first (the command line does)")
    except (OSError, ValueError, SyntaxError, Image.UnidentifiedImageError) as exc:
        return f"cannot decode: {exc}"
    if img.width < 1 or img.height < 1:
        return "empty image"
    return None
