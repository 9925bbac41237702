"""GenEval's folder layout: OUT/<digits>/metadata.jsonl + OUT/<digits>/samples/<digits>.png."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from unirl_kit.images import open_image
from unirl_kit.jsonl import read_jsonl, read_text
from unirl_kit.prompts.schema import parse_spec
from unirl_kit.types import InputError, PromptSpec

_DIGITS = re.compile(r"^\d+$")
_IMAGE = re.compile(r"^\d+\.png$")
LAYOUT_HINT = "expected IMAGES_DIR/00000/metadata.jsonl and IMAGES_DIR/00000/samples/0000.png"
# Both per-image files of a folder (`unirl eval geneval`'s results.jsonl, `unirl score`'s scores.jsonl)
# carry `image`: the path inside the folder ("00000/samples/0000.png"). GenEval's own `filename` is the
# folder as given on the command line joined with it, so only `image` joins the two wherever each ran from.
JOIN_KEY = "image"


@dataclass
class ImageItem:
    rel: str  # path relative to the images folder, posix: "00000/samples/0000.png"
    filename: str  # the official `filename` field: the images folder as given, joined with rel
    spec: PromptSpec
    metadata: dict[str, Any]  # the metadata line verbatim, for the official `metadata` field


def with_join_key(row: dict[str, Any], rel: str) -> dict[str, Any]:
    """`row` with `image` = `rel` right after `filename` (the field order new rows have)."""
    items = [(k, v) for k, v in row.items() if k != JOIN_KEY]
    at = next((i + 1 for i, (k, _) in enumerate(items) if k == "filename"), 0)
    return dict([*items[:at], (JOIN_KEY, rel), *items[at:]])


def add_join_key(row: dict[str, Any], item: ImageItem) -> dict[str, Any]:
    """`row` itself if it has `image`, else with it: rows written before the key existed get it on resume
    (the `upgrade` of both folders' `ShardedJsonl` runs)."""
    return row if JOIN_KEY in row else with_join_key(row, item.rel)


def scan_images(images_dir: Path) -> list[ImageItem]:
    """Every image of a GenEval-layout folder, prompt folders and images in numeric order."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise InputError(f"{images_dir}: not a folder; {LAYOUT_HINT}")
    folders = sorted((p for p in images_dir.iterdir() if p.is_dir() and _DIGITS.match(p.name)),
                     key=lambda p: (int(p.name), p.name))
    if not folders:
        raise InputError(f"{images_dir}: no prompt folders (all-digit names); {LAYOUT_HINT}")
    items: list[ImageItem] = []
    for folder in folders:
        meta_path = folder / "metadata.jsonl"
        if not meta_path.is_file():
            raise InputError(f"{meta_path}: missing; each prompt folder needs its metadata line ({LAYOUT_HINT})")
        rows = read_jsonl(meta_path)
        if len(rows) != 1:
            raise InputError(f"{meta_path}: expected exactly one metadata line, found {len(rows)}")
        lineno, raw = rows[0]
        spec = parse_spec(raw, f"{meta_path}:{lineno}")
        samples = folder / "samples"
        names = sorted((p.name for p in samples.iterdir() if _IMAGE.match(p.name)),
                       key=lambda n: (int(n[:-4]), n)) if samples.is_dir() else []
        if not names:
            raise InputError(f"{samples}: no images named like 0000.png; generate them first ({LAYOUT_HINT})")
        for name in names:
            rel = f"{folder.name}/samples/{name}"
            items.append(ImageItem(rel, str(images_dir / rel), spec, raw))
    return items


def load_image(images_dir: Path, rel: str) -> Image.Image:
    """The RGB image, EXIF-transposed as the reference does; a clear error for a bad or oversized file."""
    return open_image(Path(images_dir) / rel, mode="RGB", png_only=True, transpose=True)


def prompt_folder(out: Path, index: int) -> Path:
    return Path(out) / f"{index:05d}"


def image_rel(index: int, image_index: int) -> str:
    return f"{index:05d}/samples/{image_index:04d}.png"


def write_prompt_folder(out: Path, index: int, metadata: dict[str, Any]) -> Path:
    """Create OUT/<index>/ with its metadata line (rewritten only when it differs)."""
    import json

    folder = prompt_folder(out, index)
    (folder / "samples").mkdir(parents=True, exist_ok=True)
    line = json.dumps(metadata) + "\n"
    meta = folder / "metadata.jsonl"
    if meta.exists() and (old := read_text(meta)) != line:
        raise InputError(f"{meta}: holds another prompt ({old.strip()[:80]}...); "
                         "use another --out for another prompt set")
    if not meta.exists():
        tmp = meta.with_suffix(".tmp")
        tmp.write_text(line)
        tmp.replace(meta)
    return folder


def save_png_atomic(image: Image.Image, path: Path) -> None:
    """A kill never leaves a half-written PNG that a resumed run would take as done."""
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="PNG")
    tmp.replace(path)
