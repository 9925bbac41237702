"""Every image the toolkit reads (files and request bytes) goes through `open_image`.

Decoding costs memory per pixel whatever the file's size: a 450 KB 12000x12000 PNG took GenEval's
evaluation to 24 GB (about 200 bytes per pixel once detector masks exist). PIL's `Image.open` only
reads the header, so the pixel count is checked there, before anything is decoded.

The default limit, 4096 x 4096 = 16.7 Mpx, is 16 times the largest GenEval-size image (Janus 384 px,
Show-o and SD 512 px, SDXL 1024 px, all square), so 2K and 4K upscales still pass, while one image
at the limit decodes to 50 MB of RGB and stays near 3.4 GB at GenEval's 200 bytes per pixel. Set
`UNIRL_MAX_IMAGE_PIXELS` (a pixel count) to change it for every command and the reward server; PIL's
own bomb check (179 Mpx) still caps it.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from unirl_kit.types import InputError

MAX_PIXELS_ENV = "UNIRL_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 4096 * 4096

# What PIL raises on a truncated or corrupt file (a broken chunk can surface as SyntaxError,
# struct.error or zlib.error depending on the plugin; UnidentifiedImageError is an OSError).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error)

# Our limit replaces PIL's warning between 89 and 179 Mpx: a user who raised the limit chose that size.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def max_pixels() -> int:
    """The pixel limit in force: $UNIRL_MAX_IMAGE_PIXELS when set, else the default (read per call,
    so a test or a long-lived server sees a change)."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise InputError(f"{MAX_PIXELS_ENV}={raw!r}: expected a positive pixel count, e.g. {DEFAULT_MAX_PIXELS}")
    return value


def check_pixels(width: int, height: int, label: str, limit: int | None = None) -> None:
    """Refuse a width x height whose decode would pass the limit, before any pixel is allocated
    (images and image-sized masks alike)."""
    limit = max_pixels() if limit is None else limit
    if width < 0 or height < 0:
        raise InputError(f"{label}: negative image size {width}x{height}")
    if width * height > limit:
        raise InputError(f"{label}: image of {width}x{height} = {width * height:,} pixels exceeds the limit of "
                         f"{limit:,} pixels; shrink it, or raise {MAX_PIXELS_ENV} if it is meant to be this large")


def _describe(exc: BaseException) -> str:
    """A short reason for a failed decode (PIL's 'cannot identify' message names a memory address)."""
    if isinstance(exc, UnidentifiedImageError):
        return "not an image file PIL can read"
    return f"{type(exc).__name__}: {exc}"


def _decode(img: Image.Image, label: str, mode: str | None, png_only: bool, transpose: bool,
            limit: int | None) -> Image.Image:
    """Checks on the header, then the decode; returns an image that outlives its file."""
    if png_only and img.format != "PNG":
        raise InputError(f"{label}: is {img.format or 'not an image'}, not PNG; save it as PNG")
    check_pixels(img.width, img.height, label, limit)
    img.load()
    if transpose:
        img = ImageOps.exif_transpose(img)  # as GenEval's reference reads images
    return img.convert(mode) if mode else img.copy()


def open_image(source: str | Path | bytes, label: str | None = None, *, mode: str | None = None,
               png_only: bool = False, transpose: bool = False, limit: int | None = None) -> Image.Image:
    """The decoded image at a path or in bytes, or one InputError naming `label` (default: the path).

    mode: convert to it ("RGB", "L"); None keeps the file's mode. png_only: refuse other formats.
    transpose: apply the EXIF orientation. limit: pixel limit (default `max_pixels()`).
    """
    label = label or (str(source) if not isinstance(source, bytes) else "image")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            return _decode(img, label, mode, png_only, transpose, limit)
    except InputError:
        raise
    except Image.DecompressionBombError as exc:  # PIL's own cap, met in Image.open before our check
        raise InputError(f"{label}: image too large to decode ({exc}); shrink it") from None
    except _DECODE_ERRORS as exc:
        raise InputError(f"{label}: unreadable image ({_describe(exc)}); regenerate or replace it") from None
