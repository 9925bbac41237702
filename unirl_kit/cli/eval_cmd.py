"""`unirl eval geneval` (and, later, `unirl eval understanding`)."""

from __future__ import annotations

from pathlib import Path

import typer

from unirl_kit.cli.common import CONFIG_OPTION, OVERRIDES_ARG, resolve, split_positional, user_errors

app = typer.Typer(help="Evaluate images (GenEval) and understanding.", no_args_is_help=True)


@app.command("geneval")
def geneval(
    images_dir: str | None = typer.Argument(None, metavar="IMAGES_DIR", show_default=False),
    detector: str | None = typer.Option(None, help="detector plugin [default: shapes]; see `unirl plugins`"),
    out: Path | None = typer.Option(None, help="output folder for results.jsonl and summary.json"),
    detections: Path | None = typer.Option(None, help="detections JSONL for --detector precomputed"),
    color_classifier: str | None = typer.Option(None, help="colour classifier [default: the detector's own]"),
    batch_size: int | None = typer.Option(None, help="images per detector call [default: 16]"),
    config: Path | None = CONFIG_OPTION,
    overrides: list[str] | None = OVERRIDES_ARG,
) -> None:
    """GenEval, faithful to the official rules; resumable; rank-sharded under torchrun.

    Detector and colour-classifier options go in overrides: detector_options.model=DIR,
    color_options.pretrained=FILE, rules.threshold=0.3, rules.counting_threshold=0.9, ...
    """
    _geneval(images_dir, detector, out, detections, color_classifier, batch_size, config, overrides)


@user_errors
def _geneval(images_dir, detector, out, detections, color_classifier, batch_size, config, overrides) -> None:
    from unirl_kit.eval.geneval.runner import GenevalConfig, run_geneval
    from unirl_kit.eval.geneval.summary import print_table

    images_dir, overrides = split_positional(images_dir, overrides)
    cfg = resolve(GenevalConfig, config, dict(
        images_dir=images_dir, detector=detector, out=out and str(out), detections=detections and str(detections),
        color_classifier=color_classifier, batch_size=batch_size), overrides)
    summary = run_geneval(cfg)
    if summary:
        print_table(summary)
        typer.echo(f"results: {Path(cfg.out) / 'results.jsonl'}; summary: {Path(cfg.out) / 'summary.json'}")
