"""`unirl eval geneval` and `unirl eval understanding`."""

from __future__ import annotations

from pathlib import Path

import typer

from unirl_kit.cli.common import CONFIG_OPTION, OVERRIDES_ARG, resolve, split_positional, user_errors
from unirl_kit.cli.options import BACKBONE_OPTION, MODEL_OPTION

app = typer.Typer(help="Evaluate images (GenEval) and understanding.", no_args_is_help=True)


@app.command("geneval")
def geneval(
    images_dir: str | None = typer.Argument(None, metavar="IMAGES_DIR", show_default=False),
    detector: str | None = typer.Option(None, help="detector plugin (default: shapes); see `unirl plugins`"),
    out: Path | None = typer.Option(None, help="output folder for results.jsonl and summary.json"),
    detections: Path | None = typer.Option(None, help="detections JSONL for --detector precomputed"),
    color_classifier: str | None = typer.Option(None, help="colour classifier (default: the detector's own)"),
    batch_size: int | None = typer.Option(None, help="images per detector call (default: 16)"),
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


@app.command("understanding")
def understanding(
    protocol: list[str] | None = typer.Option(
        None, "--protocol", "-p", show_default=False,
        help="geneval_correct, clean, pope, vqa or imbalance; repeat for several (default: clean)"),
    images_dir: Path | None = typer.Option(None, help="generated images (GenEval layout, from `unirl generate`)"),
    geneval_results: Path | None = typer.Option(None, help="their results.jsonl (or folder) from `unirl eval geneval`"),
    vqa: Path | None = typer.Option(None, help="VQA JSONL: image, question, answers[, type] per line"),
    backbone: str | None = BACKBONE_OPTION,
    model: str | None = MODEL_OPTION,
    out: Path | None = typer.Option(None, help="output folder: summary.json, summary.md, rows.jsonl"),
    device: str | None = typer.Option(None, help="backbone.device: auto, cpu, cuda, cuda:N (default: auto)"),
    batch_size: int | None = typer.Option(None, help="questions per answer call (default: 32)"),
    config: Path | None = CONFIG_OPTION,
    overrides: list[str] | None = OVERRIDES_ARG,
) -> None:
    """Understanding: UniRL's self-QA on generated images, clean renders, POPE, VQA, and the
    generation/understanding imbalance; resumable per protocol.

    More settings go in overrides (defaults shown; alternatives in brackets): per_tag=50
    pope.strategy=random [popular|adversarial] pope.n_images=60 pope.source=clean [generated]
    imbalance.gen_rule=majority [any|all] imbalance.und_rule=majority max_new_tokens=32 seed=0
    backbone.dtype=auto backbone.options.KEY=VALUE ...
    """
    _understanding(protocol, images_dir, geneval_results, vqa, backbone, model, out, device, batch_size, config,
                   overrides)


@user_errors
def _understanding(protocol, images_dir, geneval_results, vqa, backbone, model, out, device, batch_size, config,
                   overrides) -> None:
    from unirl_kit.eval.understanding.report import print_tables
    from unirl_kit.eval.understanding.runner import UnderstandingConfig, run_understanding

    cfg = resolve(UnderstandingConfig, config, {
        "protocols": list(protocol) if protocol else None, "images_dir": images_dir and str(images_dir),
        "geneval_results": geneval_results and str(geneval_results), "vqa_file": vqa and str(vqa),
        "backbone.name": backbone, "backbone.model": model, "backbone.device": device, "out": out and str(out),
        "batch_size": batch_size}, list(overrides or []))
    summary = run_understanding(cfg)
    from unirl_kit.distributed import rank_and_world

    if rank_and_world()[0] == 0:  # the rank that wrote the files reports them
        print_tables(summary)
        typer.echo(f"summary: {Path(cfg.out) / 'summary.json'}; rows: {Path(cfg.out) / 'rows.jsonl'}")
