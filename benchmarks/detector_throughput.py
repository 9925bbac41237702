"""GenEval's detector: the converted transformers Mask2Former versus mmdet's own, images/s through `eval geneval`.

Both run the same random-weight Swin-S model (mmdet 3.3.0's packaged config, seeded; the transformers
copy made by `unirl convert mmdet-mask2former`) on the same images, one image per forward, on the CPU,
through `run_geneval` (what `unirl eval geneval` calls). Needs mmdet, so run it in the mmdet venv:

.nox/mmdet/bin/python benchmarks/detector_throughput.py [--size smoke|small|full] [--json OUT.json]

smoke: 2 images of 256x256 at a 320x256 test scale; small/full: 4/8 images of 512x512 (GenEval's
size) at mmdet's 1333x800 test scale (800x800 network inputs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

SIZES = {"smoke": (2, 256, (320, 256)), "small": (4, 512, (1333, 800)), "full": (8, 512, (1333, 800))}
CONFIG = "mask2former_swin-s-p4-w7-224_8xb2-lsj-50e_coco.py"


def _mmdet_model_and_config(root: Path, scale: tuple[int, int]) -> tuple[Path, Path]:
    """A seeded random mmdet model saved as a checkpoint, and its config with the test scale set."""
    import torch
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    from unirl_kit.eval.geneval.detectors.mmdet import _resolve_config

    register_all_modules()
    cfg = Config.fromfile(str(_resolve_config(CONFIG)))
    cfg.model.backbone.init_cfg = None
    for step in cfg.test_dataloader.dataset.pipeline:
        if step.type == "Resize":
            step.scale = scale
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    ckpt = root / "mask2former_random.pth"
    torch.save({"meta": {"mmdet_version": "3.3.0"}, "state_dict": model.state_dict()}, ckpt)
    config = root / "mask2former_test.py"
    cfg.dump(str(config))
    return ckpt, config


def _images(root: Path, n: int, side: int) -> Path:
    import numpy as np
    from PIL import Image

    from unirl_kit.eval.geneval.layout import image_rel, write_prompt_folder

    images, rng = root / "images", np.random.default_rng(0)
    for i in range(n):
        write_prompt_folder(images, i, {"tag": "single_object", "include": [{"class": "cup", "count": 1}],
                                        "prompt": "a photo of a cup"})
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(images / image_rel(i, 0))
    return images


def _run(images: Path, out: Path, detector: str, options: dict) -> dict:
    from unirl_kit.eval.geneval.runner import GenevalConfig, build_judges, run_geneval

    cfg = GenevalConfig(images_dir=str(images), out=str(out), detector=detector, detector_options=options,
                        color_classifier="shapes", batch_size=1, progress=False)
    t0 = time.perf_counter()
    build_judges(cfg)  # load time alone, to report the steady state too
    load = time.perf_counter() - t0
    t0 = time.perf_counter()
    summary = run_geneval(cfg)
    total = time.perf_counter() - t0
    n = summary["total_images"]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return {"images": n, "seconds": total, "load_seconds": load, "images_per_s": n / total,
            "images_per_s_after_load": n / max(total - load, 1e-9), "verdicts": [r["correct"] for r in rows]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    try:
        import mmdet  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        sys.exit(f"needs mmdet and transformers ({exc}): run with .nox/mmdet/bin/python (nox -s mmdet builds it)")
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    n, side, scale = SIZES[args.size]
    from unirl_kit.convert.mmdet_mask2former import convert_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ckpt, config = _mmdet_model_and_config(root, scale)
        t0 = time.perf_counter()
        converted = convert_checkpoint(ckpt, root / "converted")
        convert_s = time.perf_counter() - t0
        images = _images(root, n, side)
        rows = {
            "mmdet": _run(images, root / "ev_mmdet", "mmdet",
                          {"config": str(config), "checkpoint": str(ckpt), "device": "cpu"}),
            "mask2former": _run(images, root / "ev_m2f", "mask2former",
                                {"model": str(converted), "device": "cpu", "batch_size": 1, "scale": list(scale)}),
        }
    ratio = rows["mask2former"]["images_per_s"] / rows["mmdet"]["images_per_s"]
    steady = rows["mask2former"]["images_per_s_after_load"] / rows["mmdet"]["images_per_s_after_load"]
    same = rows["mask2former"]["verdicts"] == rows["mmdet"]["verdicts"]
    for name, row in rows.items():
        print(f"{name}: {row['images']} images {side}x{side} in {row['seconds']:.1f}s = {row['images_per_s']:.3f} "
              f"images/s (load {row['load_seconds']:.1f}s; after load {row['images_per_s_after_load']:.3f} images/s)")
    print(f"converted mask2former / mmdet images/s: {ratio:.2f} (after load: {steady:.2f}); conversion "
          f"{convert_s:.1f}s; identical verdicts: {same}")
    if args.json:
        report = {"benchmark": "detector_throughput", "size": args.size, "image_side": side, "scale": list(scale),
                  "threads": torch.get_num_threads(), "convert_seconds": convert_s, **rows,
                  "ratio_mask2former_over_mmdet": ratio, "ratio_after_load": steady, "identical_verdicts": same}
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
