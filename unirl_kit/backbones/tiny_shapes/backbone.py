"""`tiny-shapes`: the `janus` backbone with the weights this project trained and ships in the package.

Nothing to download: `--backbone tiny-shapes` loads `weights/` beside this file (written by
`unirl pretrain --config configs/pretrain/tiny_shapes.yaml stages=[export]
export_dir=unirl_kit/backbones/tiny_shapes/weights`). `--model PATH` still points it at another export.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from unirl_kit.backbones.janus import JanusBackbone

WEIGHTS_DIR = Path(__file__).with_name("weights")


class TinyShapesBackbone(JanusBackbone):
    name: ClassVar[str] = "tiny-shapes"
    DEFAULT_MODEL: ClassVar[str | None] = str(WEIGHTS_DIR)
