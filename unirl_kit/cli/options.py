"""The options every stage that loads a model spells the same way: shortcuts of backbone.name / .model."""

from __future__ import annotations

import typer

BACKBONE_OPTION = typer.Option(None, "--backbone", help="backbone.name: the backbone plugin (default: tiny-shapes); "
                                                        "see `unirl plugins`")
MODEL_OPTION = typer.Option(None, "--model", help="backbone.model: model folder (HF format), LoRA adapter folder or "
                                                  "hub id (default: the backbone's own)")
