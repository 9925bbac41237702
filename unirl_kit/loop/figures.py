"""The loop report's charts: matplotlib (Agg, no pyplot); the image grids are in sheets.py.

Every bar carries its 95% bootstrap interval (each round's own, `intervals` in report.json) and the
training curve a band (±1.96·std/√prompts of the step's batch: conservative, as a prompt's images may be
alike). Legends sit right of the axes, never on the bars. Everything is drawn at a fixed size and dpi
under matplotlib's default style, and saved without the `Software` tag (PNG has no date unless asked), so
the same report data gives byte-identical files. Charts are built on `Figure` + `FigureCanvasAgg`
directly: no global backend switch, no pyplot state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DPI = 100
Series = dict[str, Sequence[float | None]]  # legend label -> one value per category (None: no value)
Errors = dict[str, Sequence[Sequence[float] | None]]  # legend label -> [lo, hi] per category (None: none)
Panel = tuple[str, Sequence[str], Series]  # title, categories, series
Curve = tuple[str, Sequence[float], Sequence[float | None]]  # label, x, y
Band = tuple[Sequence[float | None], Sequence[float | None]] | None  # lo, hi per x of a curve


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


def _legend_right(ax: Any) -> None:
    """The legend beside the axes (tight_layout makes room), so it hides no bar or line."""
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def _nan(values: Sequence[float | None]) -> list[float]:
    return [math.nan if v is None else v for v in values]


def reward_curve(path: Path, curves: Sequence[Curve], boundaries: Sequence[float], ylabel: str,
                 bands: Sequence[Band] = ()) -> Any:
    """Training reward per global step, one line per round (and phase) with its band, round starts dotted."""
    from matplotlib.ticker import MaxNLocator

    with _style():
        fig = _figure(7.0, 3.6)
        ax = fig.add_subplot()
        for i, (label, xs, ys) in enumerate(curves):
            ax.plot(xs, _nan(ys), label=label, linewidth=1.4, marker="." if len(xs) < 40 else None, color=f"C{i}")
            band = bands[i] if i < len(bands) else None
            if band is not None:
                ax.fill_between(xs, _nan(band[0]), _nan(band[1]), color=f"C{i}", alpha=0.2, linewidth=0)
        for x in boundaries:
            ax.axvline(x, color="0.6", linestyle=":", linewidth=1)
        ax.set_xlabel("global training step")
        ax.set_ylabel(ylabel)
        ax.set_title("training reward across rounds (band: ±1.96·std/√prompts of the step)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if curves:
            _legend_right(ax)
        fig.tight_layout()
        _save(fig, path)
    return fig


def _yerr(values: Sequence[float | None], cis: Sequence[Sequence[float] | None]) -> list[list[float]]:
    """matplotlib's asymmetric [below, above] distances; NaN (no bar drawn) where no interval."""
    pairs = [(math.nan, math.nan) if v is None or ci is None else (max(0.0, v - ci[0]), max(0.0, ci[1] - v))
             for v, ci in zip(values, cis, strict=True)]
    return [[p[0] for p in pairs], [p[1] for p in pairs]]


def bars(path: Path, panels: Sequence[Panel], title: str, ylim: tuple[float, float] = (0.0, 1.15),
         errors: Sequence[Errors] = ()) -> Any:
    """Grouped bars, one panel per metric family, with 95% error bars (`errors[i]` for panel i); each bar
    labelled with its value above its interval ('n/a' when missing, a '*' when it has no interval)."""
    with _style():
        width = max(4.0, sum(1.0 + 0.75 * len(cats) for _, cats, _ in panels)) + 1.5  # + the legend
        fig = _figure(min(width, 15.0), 3.8)
        ratios = [1.0 + 0.75 * len(cats) for _, cats, _ in panels]  # a panel as wide as its bars
        axes = fig.subplots(1, len(panels), squeeze=False, gridspec_kw={"width_ratios": ratios})[0]
        bare = False
        for p, (ax, (sub, cats, series)) in enumerate(zip(axes, panels, strict=True)):
            n = max(len(series), 1)
            w = 0.8 / n
            for i, (label, values) in enumerate(series.items()):
                xs = [c + (i - (n - 1) / 2) * w for c in range(len(cats))]
                ax.bar(xs, _nan(values), width=w, label=label, color=f"C{i}")
                cis = (errors[p] if p < len(errors) else {}).get(label) or [None] * len(cats)
                ax.errorbar(xs, _nan(values), yerr=_yerr(values, cis), fmt="none", ecolor="black", elinewidth=0.8,
                            capsize=2)
                for x, v, ci in zip(xs, values, cis, strict=True):
                    top = 0.01 if v is None else max(v, ci[1] if ci else v) + 0.01
                    bare = bare or (v is not None and ci is None)
                    text = "n/a" if v is None else f"{v:.2f}" + ("*" if ci is None else "")
                    ax.text(x, top, text, ha="center", va="bottom", fontsize=6, rotation=90 if n * len(cats) > 8 else 0)
            ax.set_xticks(range(len(cats)), [c.replace("_", " ") for c in cats], rotation=30, ha="right",
                          fontsize=8)
            ax.set_xlim(-0.5, len(cats) - 0.5)  # fixed: a panel of missing bars has no data to autoscale on
            ax.set_ylim(*ylim)
            ax.set_title(sub, fontsize=9)
            ax.grid(axis="y", alpha=0.3)
        if bare:  # said in the legend, outside the data too
            from unirl_kit.eval.geneval.paired import MIN_UNITS

            axes[-1].plot([], [], " ", label=f"* no interval\n(n < {MIN_UNITS}, or no\nper-item results)")
        _legend_right(axes[-1])
        fig.suptitle(f"{title} (error bars: 95% bootstrap interval)", fontsize=10)
        fig.tight_layout()
        _save(fig, path)
    return fig


def _band(phase: dict[str, Any]) -> Band:
    """mean ± 1.96·std/√prompts per step; std over the batch's images, prompts its independent groups."""
    m, s, p = phase["metrics"].get("reward/mean"), phase["metrics"].get("reward/std"), phase.get("prompts_per_step")
    if not m or not s or not p:
        return None
    half = [None if v is None else 1.96 * v / math.sqrt(p) for v in s]
    return ([None if a is None or h is None else a - h for a, h in zip(m, half, strict=True)],
            [None if a is None or h is None else a + h for a, h in zip(m, half, strict=True)])


def draw(report: dict[str, Any], loop_dir: Path) -> dict[str, str | None]:
    """Every figure the report's data allows, under loop_dir/figures; name -> path relative to loop_dir.

    A figure with nothing to show is not drawn (None), and an old file of that name is removed, so
    the folder never shows a picture the report no longer describes.
    """
    from unirl_kit.loop.report import IMBALANCE_KEYS, UND_TYPES, _get
    from unirl_kit.loop.sheets import loop_grid

    folder = Path(loop_dir) / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    rounds = {r["round"]: r for r in report["rounds"]}
    pair = [rounds[i] for i in dict.fromkeys((report["baseline_round"], report["last_round"])) if i in rounds]
    labels = [f"round {r['round']}" for r in pair]
    made: dict[str, bool] = {}

    curves: list[Curve] = []
    bands: list[Band] = []
    for r in report["rounds"]:
        for ph in r["training"] or []:
            if "reward/mean" in ph["metrics"]:
                off = ph["global_offset"]
                curves.append((f"round {r['round']} {ph['phase']}", [off + s for s in ph["steps"]],
                               ph["metrics"]["reward/mean"]))
                bands.append(_band(ph))
    if curves:
        bounds = sorted({ph["global_offset"] for r in report["rounds"] for ph in r["training"] or []} - {0})
        reward_curve(folder / "reward_curve.png", curves, bounds, "reward mean (train batch)", bands=bands)
    made["reward_curve"] = bool(curves)

    def series(path: tuple[str, ...], scores: str, keys: Sequence[str]) -> tuple[Series, Errors]:
        """Per label: the scores of `keys` then the overall, and each one's own interval (`intervals`)."""
        vals = {lab: [*(_get(r, *path, scores, k) for k in keys), _get(r, *path, "overall")]
                for lab, r in zip(labels, pair, strict=True)}
        errs = {lab: [*(_get(r, "intervals", *path, "tags", k, "ci") for k in keys),
                      _get(r, "intervals", *path, "overall", "ci")] for lab, r in zip(labels, pair, strict=True)}
        return vals, errs

    tags = list(dict.fromkeys(t for r in pair for t in (_get(r, "geneval", "tags") or {})))
    made["geneval_tags"] = any(r.get("geneval") for r in pair)
    if made["geneval_tags"]:
        s, e = series(("geneval",), "tags", tags)
        bars(folder / "geneval_tags.png", [("GenEval score", [*tags, "overall"], s)], "GenEval per tag", errors=[e])

    panels: list[Panel] = []
    errors: list[Errors] = []
    for name, title in UND_TYPES.items():
        if any(_get(r, "understanding", name) for r in pair):
            types = list(dict.fromkeys(t for r in pair for t in (_get(r, "understanding", name, "accuracy") or {})))
            s, e = series(("understanding", name), "accuracy", types)
            panels.append((title, [*types, "overall"], s))
            errors.append(e)
    if panels:
        bars(folder / "understanding.png", panels, "Understanding accuracy per question type", errors=errors)
    made["understanding"] = bool(panels)

    made["imbalance"] = any(_get(r, "understanding", "imbalance") for r in pair)
    if made["imbalance"]:
        keys = list(IMBALANCE_KEYS)
        s = {lab: [_get(r, "understanding", "imbalance", k) for k in keys] for lab, r in zip(labels, pair, strict=True)}
        e = {lab: [_get(r, "intervals", "understanding", "imbalance", k, "ci") for k in keys]
             for lab, r in zip(labels, pair, strict=True)}
        bars(folder / "imbalance.png", [("share of prompts", list(IMBALANCE_KEYS.values()), s)],
             "Generation / understanding imbalance (lower is better)", errors=[e])

    made["grid"] = loop_grid(Path(loop_dir), folder / "grid.png", [r["folder"] for r in pair], labels)

    out: dict[str, str | None] = {}
    for name, ok in made.items():
        if not ok:
            (folder / f"{name}.png").unlink(missing_ok=True)
        out[name] = f"figures/{name}.png" if ok else None
    return out
