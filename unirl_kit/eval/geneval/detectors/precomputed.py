"""`precomputed` detector: detections made elsewhere (another environment or machine), read from JSONL.

One line per image: {"filename": "<path relative to IMAGES_DIR>", "detections": [{"class": str,
"box": [x1, y1, x2, y2], "score": float, "color": str?, "mask": <RLE or PNG path>?}]}. RLE is COCO's,
compressed string or uncompressed list, column-major; a PNG path is relative to the detections file
and must stay inside its folder.

Masks are checked when the file is read (RLE sizes and counts, PNG headers and paths), so a bad file
fails before any work, but decoded only when their image is detected: a file of many images with
image-sized masks would otherwise hold every decoded mask in memory at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from unirl_kit.eval.geneval.detectors import Detector
from unirl_kit.images import check_pixels, open_image
from unirl_kit.jsonl import read_jsonl
from unirl_kit.types import Detection, InputError


def decode_rle(rle: dict[str, Any], where: str = "RLE mask") -> np.ndarray:
    """COCO RLE ({"size": [h, w], "counts": str | list[int]}) -> HxW bool mask; the size is held to
    the image pixel limit before the mask is allocated (a short line can claim any size)."""
    h, w = (int(v) for v in rle["size"])
    check_pixels(w, h, where)
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = _counts_from_string(counts)
    flat = np.zeros(h * w, dtype=bool)
    pos, value = 0, False
    for run in counts:
        if value:
            flat[pos:pos + run] = True
        pos += run
        value = not value
    if pos != h * w:
        raise ValueError(f"RLE counts add up to {pos}, expected {h}x{w}={h * w}")
    return flat.reshape((w, h)).T  # column-major, as COCO stores masks


def _counts_from_string(s: str) -> list[int]:
    """pycocotools' compact LEB128-like string, written without pycocotools."""
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def _mask_path(base: Path, mask: str, where: str) -> Path:
    """The mask PNG's path, which must resolve (symlinks and '..' followed) inside the detections
    file's folder: a file handed to us must not make us read elsewhere on the machine."""
    root = base.resolve()
    try:
        path = (root / mask).resolve()
    except (OSError, ValueError, RuntimeError) as exc:  # a NUL byte, a symlink loop
        raise InputError(f"{where}: bad mask path {mask!r} ({exc})") from None
    if not path.is_relative_to(root):
        raise InputError(f"{where}: mask path {mask!r} resolves to {path}, outside the detections file's folder "
                         f"{root}; keep mask PNGs in that folder or below it")
    if not path.is_file():
        raise InputError(f"{where}: mask PNG {path} not found")
    return path


@dataclass(frozen=True)
class _Entry:
    """One detection as read: its mask kept as the RLE object or PNG path, decoded when needed."""

    det: Detection  # without its mask
    mask: dict[str, Any] | Path | None
    where: str

    def load(self) -> Detection:
        """The detection with its mask decoded (an HxW bool array), read now and not kept."""
        if isinstance(self.mask, Path):
            mask = np.asarray(open_image(self.mask, f"{self.where}: mask PNG {self.mask}", mode="L")) > 127
        elif isinstance(self.mask, dict):
            try:
                mask = decode_rle(self.mask, f"{self.where}: RLE mask")
            except InputError:
                raise
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                raise InputError(f"{self.where}: bad RLE mask ({exc})") from None
        else:
            return self.det
        return replace(self.det, mask=mask)


def _check_rle(rle: dict[str, Any], where: str) -> None:
    """An RLE mask checked without allocating it: a size within the pixel limit, counts (decoded from
    the compact string if need be) of non-negative integers adding up to height x width."""
    try:
        h, w = (int(v) for v in rle["size"])
        check_pixels(w, h, f"{where}: RLE mask")
        counts = rle["counts"]
        counts = _counts_from_string(counts) if isinstance(counts, str) else counts
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            raise ValueError("counts must be non-negative integers")
    except InputError:
        raise
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise InputError(f"{where}: bad RLE mask ({exc})") from None
    if sum(counts) != h * w:
        raise InputError(f"{where}: bad RLE mask (RLE counts add up to {sum(counts)}, expected {h}x{w}={h * w})")


def _check_png_header(path: Path, label: str) -> None:
    """A mask PNG's size held to the pixel limit from its header alone (no pixel is decoded)."""
    try:
        with Image.open(path) as img:
            check_pixels(img.width, img.height, label)
    except InputError:
        raise
    except Image.DecompressionBombError as exc:
        raise InputError(f"{label}: image too large to decode ({exc}); shrink it") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"{label}: unreadable image ({type(exc).__name__}: {exc}); regenerate or replace it") from None


def _parse_detection(obj: Any, where: str, base: Path) -> _Entry:
    """One detection checked in full; its mask left undecoded (see `_Entry.load`)."""
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected a detection object, got {obj!r}")
    cls, box, score = obj.get("class"), obj.get("box"), obj.get("score")
    if not isinstance(cls, str):
        raise InputError(f"{where}: 'class' must be a string, got {cls!r}")
    if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
        raise InputError(f"{where}: 'box' must be [x1, y1, x2, y2], got {box!r}")
    if not isinstance(score, (int, float)) or isinstance(score, bool):
        raise InputError(f"{where}: 'score' must be a number, got {score!r}")
    mask = obj.get("mask")
    if isinstance(mask, str):
        mask = _mask_path(base, mask, where)
        _check_png_header(mask, f"{where}: mask PNG {mask}")
    elif isinstance(mask, dict):
        _check_rle(mask, where)
    elif mask is not None:
        raise InputError(f"{where}: 'mask' must be an RLE object or a PNG path")
    color = obj.get("color")
    return _Entry(Detection(cls, tuple(float(v) for v in box), float(score), None, color), mask, where)


class PrecomputedDetector(Detector):
    """Reads detections from a JSONL file made elsewhere (another env or machine)."""

    classes = None
    default_color_classifier = "precomputed"

    def __init__(self, path: str):
        self.path = Path(path)
        self._by_file: dict[str, list[_Entry]] = {}
        for lineno, obj in read_jsonl(self.path):
            where = f"{self.path}:{lineno}"
            if not isinstance(obj, dict) or not isinstance(obj.get("filename"), str):
                raise InputError(f"{where}: expected {{\"filename\": ..., \"detections\": [...]}}")
            dets = obj.get("detections", [])
            if not isinstance(dets, list):
                raise InputError(f"{where}: 'detections' must be a list")
            key = Path(obj["filename"]).as_posix()
            if key in self._by_file:
                raise InputError(f"{where}: second line for {key!r}; keep one line per image")
            self._by_file[key] = [_parse_detection(d, f"{where} detections[{i}]", self.path.parent)
                                  for i, d in enumerate(dets)]

    def check_filenames(self, filenames: Sequence[str]) -> None:
        """The file must describe exactly the images being scored."""
        wanted = set(filenames)
        missing = sorted(wanted - set(self._by_file))
        extra = sorted(set(self._by_file) - wanted)
        if missing or extra:
            example = f"no line for {missing[0]!r}" if missing else f"a line for {extra[0]!r}, which is not an image here"
            raise InputError(
                f"{self.path}: detections do not match the images ({len(missing)} missing, {len(extra)} unknown; "
                f"{example}); filenames must be relative to IMAGES_DIR, like '00000/samples/0000.png'"
            )

    def detect(self, images: Sequence[Image.Image], filenames: Sequence[str]) -> list[list[Detection]]:
        """The detections of these images, their masks decoded now (only this batch's are in memory)."""
        out = []
        for img, name in zip(images, filenames, strict=True):
            dets = [entry.load() for entry in self._by_file[Path(name).as_posix()]]
            for d in dets:
                if d.mask is not None and d.mask.shape != (img.height, img.width):
                    raise InputError(f"{self.path}: mask of a {d.cls!r} in {name} is {d.mask.shape}, image is "
                                     f"{(img.height, img.width)}")
            out.append(dets)
        return out
