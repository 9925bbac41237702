"""The loop report's image grids (PIL, default font, nothing downloaded): figures/grid.png (the first
prompts, round 0 above the last round) and one contact sheet per evaluated round.

A contact sheet, round-NNN/contact_sheet.png, shows the round's eval images as `unirl generate` gridded
them (each prompt's samples/../grid.png), one cell per prompt under its text and its GenEval verdicts
("[1/2]": images judged correct), so a reader can check a number against the pictures. It holds the first
CONTACT_PROMPTS prompts (the same ones every round), CONTACT_COLUMNS to a row: at most about
1100 x 950 px whatever the eval set's size.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unirl_kit.jsonl import read_jsonl
from unirl_kit.types import InputError

GRID_PROMPTS = 6  # eval prompts shown in figures/grid.png (the first ones: same prompts and seeds every round)
CONTACT_PROMPTS = 24  # eval prompts on a round's contact sheet
CONTACT_COLUMNS = 6
SHEET = "contact_sheet.png"
Column = tuple[str, Sequence[Any]]  # caption, one image (or None) per row


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable font
    except TypeError:
        return ImageFont.load_default()


def _fit(image: Any, size: int) -> Any:
    """Scaled to fit a `size` square: whole-pixel nearest from 2x up (generated pixels stay crisp),
    Lanczos below (a 130 px K=2 grid grows to 160 px without uneven pixels)."""
    from PIL import Image

    w, h = image.size
    scale = min(size / h, size / w)
    resample = Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.LANCZOS
    scale = math.floor(scale) if scale >= 2 else scale
    return image.convert("RGB").resize((max(1, round(w * scale)), max(1, round(h * scale))), resample)


def image_grid(path: Path, columns: Sequence[Column], row_labels: Sequence[str], cell: int = 160,
               per_band: int | None = None) -> tuple[int, int]:
    """One column per prompt (its text on top), one row per label; `None` images leave a grey cell.
    `per_band`: at most that many columns side by side, the rest in further bands below (each with its
    captions and row labels). Returns the PNG's (width, height).

    Cells are `cell` wide and as tall as the tallest scaled grid (K=2 grids are twice as wide as tall).
    """
    from PIL import Image, ImageDraw

    font, small = _font(12), _font(11)
    pad, label_w, line_h = 6, 80, 14
    fitted = [[None if im is None else _fit(im, cell) for im in images] for _, images in columns]
    cell_h = max((im.size[1] for col in fitted for im in col if im is not None), default=cell)
    captions = [textwrap.wrap(text, width=max(10, cell // 7))[:4] for text, _ in columns]
    caption_h = line_h * max((len(c) for c in captions), default=1) + pad
    step = per_band or max(len(columns), 1)
    bands = max(1, math.ceil(len(columns) / step))
    band_h = caption_h + pad + len(row_labels) * (cell_h + pad)
    width = label_w + min(len(columns), step) * (cell + pad) + pad
    canvas = Image.new("RGB", (width, bands * band_h), "white")
    draw = ImageDraw.Draw(canvas)
    for b in range(bands):
        for r, label in enumerate(row_labels):
            y = b * band_h + caption_h + pad + r * (cell_h + pad)
            draw.text((pad, y + cell_h // 2 - line_h // 2), label, fill="black", font=font)
    for c, (images, lines) in enumerate(zip(fitted, captions, strict=True)):
        x, top = label_w + (c % step) * (cell + pad), (c // step) * band_h
        for i, line in enumerate(lines):
            draw.text((x, top + pad + i * line_h), line, fill="black", font=small)
        for r in range(len(row_labels)):
            y = top + caption_h + pad + r * (cell_h + pad)
            image = images[r] if r < len(images) else None
            if image is None:
                draw.rectangle((x, y, x + cell - 1, y + cell_h - 1), fill=(225, 225, 225))
                draw.text((x + pad, y + cell_h // 2 - line_h // 2), "missing", fill="black", font=small)
            else:
                canvas.paste(image, (x + (cell - image.size[0]) // 2, y + (cell_h - image.size[1]) // 2))
    tmp = path.with_name(path.name + ".tmp")
    canvas.save(tmp, format="PNG")
    tmp.replace(path)
    return canvas.size


def _prompt_text(prompt_dir: Path) -> str:
    try:
        return str(read_jsonl(prompt_dir / "metadata.jsonl")[0][1]["prompt"])
    except (InputError, IndexError, KeyError, TypeError):
        return prompt_dir.name


def _grid_columns(loop_dir: Path, folders: Sequence[str], limit: int) -> list[tuple[str, str, list[Any]]]:
    """The first `limit` prompts with a grid.png in the first folder that has samples: (prompt folder,
    prompt text, its grid per folder, None where absent)."""
    from unirl_kit.images import open_image

    samples = [loop_dir / f / "samples" for f in folders]
    first = next((s for s in samples if s.is_dir()), None)
    if first is None:
        return []
    names = sorted((p.name for p in first.iterdir() if p.name.isdigit() and (p / "grid.png").is_file()),
                   key=lambda n: (int(n), n))[:limit]
    columns = []
    for name in names:
        images = []
        for s in samples:
            try:
                images.append(open_image(s / name / "grid.png", mode="RGB"))
            except InputError:  # absent, unreadable or oversized: the figure shows a gap
                images.append(None)
        columns.append((name, _prompt_text(first / name), images))
    return columns


def loop_grid(loop_dir: Path, path: Path, folders: Sequence[str], labels: Sequence[str]) -> bool:
    """figures/grid.png: the first GRID_PROMPTS prompts, one row per round folder; False: nothing to show."""
    columns = _grid_columns(loop_dir, folders, GRID_PROMPTS)
    if columns:
        image_grid(path, [(text, images) for _, text, images in columns], labels)
    return bool(columns)


def _verdicts(folder: Path) -> dict[str, str]:
    """prompt folder -> '[correct/images] ' from the round's GenEval results; {} without them."""
    from unirl_kit.eval.geneval.paired import per_prompt, read_results

    path = folder / "geneval" / "results.jsonl"
    if not path.is_file():
        return {}
    return {k: f"[{round(mean * n)}/{n}] " for k, (_, mean, n) in per_prompt(read_results(path)).items()}


def contact_sheets(report: dict[str, Any], loop_dir: Path) -> dict[int, str | None]:
    """round -> its contact sheet's path relative to loop_dir (None: not evaluated, or no samples; an old
    sheet of such a round is removed)."""
    out: dict[int, str | None] = {}
    for r in report["rounds"]:
        folder = Path(loop_dir) / r["folder"]
        columns = _grid_columns(Path(loop_dir), [r["folder"]], CONTACT_PROMPTS) if r["evaluated"] else []
        if not columns:
            (folder / SHEET).unlink(missing_ok=True)
            out[r["round"]] = None
            continue
        marks = _verdicts(folder)
        image_grid(folder / SHEET, [(marks.get(name, "") + text, images) for name, text, images in columns],
                   [f"round {r['round']}"], per_band=CONTACT_COLUMNS)
        out[r["round"]] = f"{r['folder']}/{SHEET}"
    return out
