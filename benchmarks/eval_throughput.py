"""Evaluator throughput, measured side by side in one run.

1. `shapes` detector: images/s of the whole `eval geneval` path (load, detect, judge, write) on
   >= 2,000 rendered images.
2. `mask2former`: the same tiny random model on the same images, batched versus one image at a
   time; prints images/s of each and their ratio.

python benchmarks/eval_throughput.py [--size small|full] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

SIZES = {"smoke": (504, 4, 4), "small": (2004, 16, 8), "full": (4008, 32, 8)}  # shapes images, m2f images, batch


def _render(root: Path, n_images: int, seed: int = 0) -> Path:
    from unirl_kit.prompts.generate import generate_prompts
    from unirl_kit.worlds.shapes.dataset import render_prompt_set

    specs = generate_prompts("shapes", n_images // 4, seed)
    images = root / "images"
    render_prompt_set(specs, images, images_per_prompt=4, seed=seed)
    return images


def _eval(images: Path, out: Path, **kw) -> tuple[float, dict]:
    from unirl_kit.eval.geneval.runner import GenevalConfig, run_geneval

    cfg = GenevalConfig(images_dir=str(images), out=str(out), progress=False, **kw)
    t0 = time.perf_counter()
    summary = run_geneval(cfg)
    return time.perf_counter() - t0, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    n_shapes, n_m2f, batch = SIZES[args.size]
    report: dict = {"benchmark": "eval_throughput", "size": args.size}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        images = _render(root, n_shapes)
        render_s = time.perf_counter() - t0
        secs, summary = _eval(images, root / "ev_shapes", detector="shapes", batch_size=64)
        n = summary["total_images"]
        report["shapes"] = {"images": n, "seconds": secs, "images_per_s": n / secs,
                            "render_images_per_s": n / render_s, "overall": summary["overall"]}
        print(f"shapes detector: {n} images in {secs:.2f}s = {n / secs:.0f} images/s "
              f"(rendering: {n / render_s:.0f} images/s); overall {summary['overall']:.3f}")

        import torch

        from unirl_kit.testing.tiny_models import save_tiny_mask2former

        torch.set_num_threads(max(1, torch.get_num_threads()))
        model_dir = save_tiny_mask2former(root / "m2f", seed=0)
        small = root / "m2f_images"
        _copy_subset(images, small, n_m2f)
        rows = {}
        for label, bs in (("batched", batch), ("one_at_a_time", 1)):
            opts = {"model": str(model_dir), "batch_size": bs, "device": "cpu"}
            # tiny random model: colour checks would need CLIP; the precomputed-free path is
            # exercised by giving shapes-world images the shapes colour classifier
            secs, summary = _eval(small, root / f"ev_{label}", detector="mask2former", detector_options=opts,
                                  color_classifier="shapes", batch_size=bs)
            rows[label] = {"images": summary["total_images"], "seconds": secs,
                           "images_per_s": summary["total_images"] / secs}
        ratio = rows["batched"]["images_per_s"] / rows["one_at_a_time"]["images_per_s"]
        same = (root / "ev_batched/results.jsonl").read_text() == (root / "ev_one_at_a_time/results.jsonl").read_text()
        report["mask2former"] = {**rows, "batch_size": batch, "speedup_batched": ratio, "identical_results": same}
        print(f"mask2former (tiny, random, CPU): batched x{batch} {rows['batched']['images_per_s']:.2f} images/s, "
              f"one at a time {rows['one_at_a_time']['images_per_s']:.2f} images/s, ratio {ratio:.2f}; "
              f"identical results: {same}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


def _copy_subset(src: Path, dst: Path, n_images: int) -> None:
    """The first prompts' folders (shapes classes), relabelled to COCO classes the model knows."""
    import shutil

    from unirl_kit.eval.geneval.layout import write_prompt_folder

    folders = sorted(p for p in src.iterdir() if p.is_dir())
    copied = 0
    for i, folder in enumerate(folders):
        if copied >= n_images:
            break
        write_prompt_folder(dst, i, {"tag": "single_object", "include": [{"class": "cup", "count": 1}],
                                     "prompt": "a photo of a cup"})
        for png in sorted((folder / "samples").glob("*.png")):
            if copied < n_images:
                shutil.copy(png, dst / folder.name / "samples" / png.name)
                copied += 1


if __name__ == "__main__":
    main()
