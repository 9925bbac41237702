"""The loop report's PNG figures: matplotlib (Agg, no pyplot) for the charts, PIL for the image grid.

Everything is drawn at a fixed size and dpi under matplotlib's default style, and saved without the
`Software` tag (PNG has no date unless asked), so the same report data gives byte-identical files.
Charts are built on `Figure` + `FigureCanvasAgg` directly: no global backend switch, no pyplot state.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unirl_kit.jsonl import read_jsonl
from unirl_kit.types import InputError

DPI = 100
GRID_PROMPTS = 6  # eval prompts shown in grid.png (the first ones: same prompts and seeds every round)
Series = dict[str, Sequence[float | None]]  # legend label -> one value per category (None: no value)
Panel = tuple[str, Sequence[str], Series]  # title, categories, series
Curve = tuple[str, Sequence[float], Sequence[float | None]]  # label, x, y


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> None:
    """Written beside and renamed, so a reader never sees half a PNG."""
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})
    tmp.replace(path)


def _style() -> Any:
    import matplotlib.style

    return matplotlib.style.context("default")  # a user's matplotlibrc must not change the bytes


def reward_curve(path: Path, curves: Sequence[Curve], boundaries: Sequence[float], ylabel: str) -> None:
    """Training reward per global step, one line per round (and phase), round starts dotted."""
    from matplotlib.ticker import MaxNLocator

    with _style():
        fig = _figure(7.0, 3.6)
        ax = fig.add_subplot()
        for label, xs, ys in curves:
            ax.plot(xs, [math.nan if y is None else y for y in ys], label=label, linewidth=1.4,
                    marker="." if len(xs) < 40 else None)
        for x in boundaries:
            ax.axvline(x, color="0.6", linestyle=":", linewidth=1)
        ax.set_xlabel("global training step")
        ax.set_ylabel(ylabel)
        ax.set_title("training reward across rounds")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if curves:
            ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        _save(fig, path)


def bars(path: Path, panels: Sequence[Panel], title: str, ylim: tuple[float, float] = (0.0, 1.08)) -> None:
    """Grouped bars, one panel per metric family; each bar labelled with its value ('n/a' when missing)."""
    with _style():
        width = max(4.0, sum(1.0 + 0.75 * len(cats) for _, cats, _ in panels))
        fig = _figure(min(width, 14.0), 3.8)
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (sub, cats, series) in zip(axes, panels, strict=True):
            n = max(len(series), 1)
            w = 0.8 / n
            for i, (label, values) in enumerate(series.items()):
                xs = [c + (i - (n - 1) / 2) * w for c in range(len(cats))]
                heights = [math.nan if v is None else v for v in values]
                ax.bar(xs, heights, width=w, label=label, color=f"C{i}")
                for x, v in zip(xs, values, strict=True):
                    ax.text(x, 0.01 if v is None else v + 0.01, "n/a" if v is None else f"{v:.2f}",
                            ha="center", va="bottom", fontsize=6, rotation=90 if n > 2 else 0)
            ax.set_xticks(range(len(cats)), [c.replace("_", " ") for c in cats], rotation=30, ha="right",
                          fontsize=8)
            ax.set_ylim(*ylim)
            ax.set_title(sub, fontsize=9)
            ax.grid(axis="y", alpha=0.3)
        axes[0].legend(fontsize=7, loc="upper left")
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        _save(fig, path)


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


def image_grid(path: Path, columns: Sequence[tuple[str, Sequence[Any]]], row_labels: Sequence[str],
               cell: int = 160) -> None:
    """One column per prompt (its text on top), one row per round; `None` images leave a grey cell.

    Cells are `cell` wide and as tall as the tallest scaled grid (K=2 grids are twice as wide as tall).
    """
    from PIL import Image, ImageDraw

    font, small = _font(12), _font(11)
    pad, label_w, line_h = 6, 80, 14
    fitted = [[None if im is None else _fit(im, cell) for im in images] for _, images in columns]
    cell_h = max((im.size[1] for col in fitted for im in col if im is not None), default=cell)
    captions = [textwrap.wrap(text, width=max(10, cell // 7))[:4] for text, _ in columns]
    caption_h = line_h * max((len(c) for c in captions), default=1) + pad
    width = label_w + len(columns) * (cell + pad) + pad
    height = caption_h + pad + len(row_labels) * (cell_h + pad)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for r, label in enumerate(row_labels):
        y = caption_h + pad + r * (cell_h + pad)
        draw.text((pad, y + cell_h // 2 - line_h // 2), label, fill="black", font=font)
    for c, (images, lines) in enumerate(zip(fitted, captions, strict=True)):
        x = label_w + c * (cell + pad)
        for i, line in enumerate(lines):
            draw.text((x, pad + i * line_h), line, fill="black", font=small)
        for r in range(len(row_labels)):
            y = caption_h + pad + r * (cell_h + pad)
            image = images[r] if r < len(images) else None
            if image is None:
                draw.rectangle((x, y, x + cell - 1, y + cell_h - 1), fill=(225, 225, 225))
                draw.text((x + pad, y + cell_h // 2 - line_h // 2), "missing", fill="black", font=small)
            else:
                canvas.paste(image, (x + (cell - image.size[0]) // 2, y + (cell_h - image.size[1]) // 2))
    tmp = path.with_name(path.name + ".tmp")
    canvas.save(tmp, format="PNG")
    tmp.replace(path)


def _prompt_text(prompt_dir: Path) -> str:
    try:
        return str(read_jsonl(prompt_dir / "metadata.jsonl")[0][1]["prompt"])
    except (InputError, IndexError, KeyError, TypeError):
        return prompt_dir.name


def _grid_columns(loop_dir: Path, folders: Sequence[str]) -> list[tuple[str, list[Any]]]:
    """The first prompts with a grid.png in the first folder that has samples, each with its grid per
    folder (None: absent)."""
    from unirl_kit.images import open_image
    from unirl_kit.types import InputError

    samples = [loop_dir / f / "samples" for f in folders]
    first = next((s for s in samples if s.is_dir()), None)
    if first is None:
        return []
    names = sorted((p.name for p in first.iterdir() if p.name.isdigit() and (p / "grid.png").is_file()),
                   key=lambda n: (int(n), n))[:GRID_PROMPTS]
    columns = []
    for name in names:
        images = []
        for s in samples:
            try:
                images.append(open_image(s / name / "grid.png", mode="RGB"))
            except InputError:  # absent, unreadable or oversized: the figure shows a gap
                images.append(None)
        columns.append((_prompt_text(first / name), images))
    return columns


def draw(report: dict[str, Any], loop_dir: Path) -> dict[str, str | None]:
    """Every figure the report's data allows, under loop_dir/figures; name -> path relative to loop_dir.

    A figure with nothing to show is not drawn (None), and an old file of that name is removed, so
    the folder never shows a picture the report no longer describes.
    """
    from unirl_kit.loop.report import IMBALANCE_KEYS, UND_TYPES, _get

    folder = Path(loop_dir) / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    rounds = {r["round"]: r for r in report["rounds"]}
    pair = [rounds[i] for i in dict.fromkeys((report["baseline_round"], report["last_round"])) if i in rounds]
    labels = [f"round {r['round']}" for r in pair]
    made: dict[str, bool] = {}

    curves: list[Curve] = []
    for r in report["rounds"]:
        for ph in r["training"] or []:
            if "reward/mean" in ph["metrics"]:
                off = ph["global_offset"]
                curves.append((f"round {r['round']} {ph['phase']}", [off + s for s in ph["steps"]],
                               ph["metrics"]["reward/mean"]))
    if curves:
        bounds = sorted({ph["global_offset"] for r in report["rounds"] for ph in r["training"] or []} - {0})
        reward_curve(folder / "reward_curve.png", curves, bounds, "reward mean (train batch)")
    made["reward_curve"] = bool(curves)

    def series(*path: str, keys: Sequence[str]) -> Series:
        return {lab: [_get(r, *path, k) for k in keys] for lab, r in zip(labels, pair, strict=True)}

    tags = list(dict.fromkeys(t for r in pair for t in (_get(r, "geneval", "tags") or {})))
    made["geneval_tags"] = any(r.get("geneval") for r in pair)
    if made["geneval_tags"]:
        s = series("geneval", "tags", keys=tags)
        for lab, r in zip(labels, pair, strict=True):
            s[lab] = [*s[lab], _get(r, "geneval", "overall")]
        bars(folder / "geneval_tags.png", [("GenEval score", [*tags, "overall"], s)], "GenEval per tag")

    panels: list[Panel] = []
    for name, title in UND_TYPES.items():
        if any(_get(r, "understanding", name) for r in pair):
            types = list(dict.fromkeys(t for r in pair for t in (_get(r, "understanding", name, "accuracy") or {})))
            s = series("understanding", name, "accuracy", keys=types)
            for lab, r in zip(labels, pair, strict=True):
                s[lab] = [*s[lab], _get(r, "understanding", name, "overall")]
            panels.append((title, [*types, "overall"], s))
    if panels:
        bars(folder / "understanding.png", panels, "Understanding accuracy per question type")
    made["understanding"] = bool(panels)

    made["imbalance"] = any(_get(r, "understanding", "imbalance") for r in pair)
    if made["imbalance"]:
        bars(folder / "imbalance.png", [("share of prompts", list(IMBALANCE_KEYS.values()),
                                         series("understanding", "imbalance", keys=list(IMBALANCE_KEYS)))],
             "Generation / understanding imbalance (lower is better)")

    columns = _grid_columns(Path(loop_dir), [r["folder"] for r in pair])
    if columns:
        image_grid(folder / "grid.png", columns, labels)
    made["grid"] = bool(columns)

    out: dict[str, str | None] = {}
    for name, ok in made.items():
        if not ok:
            (folder / f"{name}.png").unlink(missing_ok=True)
        out[name] = f"figures/{name}.png" if ok else None
    return out
