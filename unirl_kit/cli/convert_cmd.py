"""`unirl convert`: other frameworks' checkpoints into folders this project loads."""

from __future__ import annotations

from pathlib import Path

import typer

from unirl_kit.cli.common import user_errors

app = typer.Typer(help="Convert checkpoints (mmdet Mask2Former -> transformers).", no_args_is_help=True)


@app.command("mmdet-mask2former")
def mmdet_mask2former(
    checkpoint: Path = typer.Argument(..., metavar="CHECKPOINT.pth", show_default=False,
                                      help="mmdet 2.x or 3.x Mask2Former (Swin) checkpoint"),
    out: Path = typer.Option(..., "--out", "-o", show_default=False, help="new folder for the transformers model"),
    trust_pickle: bool = typer.Option(False, help="load pickled objects besides tensors (trusted files only)"),
    force: bool = typer.Option(False, help="write into --out even if it is not empty"),
) -> None:
    """GenEval's reference detector without mmcv: writes a folder for `--detector mask2former`.

    Strict: every checkpoint key is mapped or known to be unused, every transformers weight is filled,
    shapes match (mapping: docs/mmdet_conversion.md). Then: unirl eval geneval IMAGES --detector
    mask2former detector_options.model=OUT ...
    """
    _convert(checkpoint, out, trust_pickle, force)


@user_errors
def _convert(checkpoint: Path, out: Path, trust_pickle: bool, force: bool) -> None:
    from unirl_kit.convert.mmdet_mask2former import convert_checkpoint

    folder = convert_checkpoint(checkpoint, out, trust_pickle=trust_pickle, force=force)
    typer.echo(f"wrote {folder}: use --detector mask2former detector_options.model={folder}")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="convert")
