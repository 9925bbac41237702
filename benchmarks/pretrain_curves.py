"""Loss curves of the tiny-shapes pre-training (tokenizer, vision tower, language model) from their log.jsonl files.

python benchmarks/pretrain_curves.py [--run artifacts/pretrain/tiny_shapes] [--out docs/figures/pretrain_curves.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("artifacts/pretrain/tiny_shapes"))
    ap.add_argument("--out", type=Path, default=Path("docs/figures/pretrain_curves.png"))
    args = ap.parse_args()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tok, lm = _rows(args.run / "tokenizer" / "log.jsonl"), _rows(args.run / "lm" / "log.jsonl")
    vision = _rows(args.run / "vision" / "log.jsonl")
    fig = Figure(figsize=(14, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    left, middle, right = (fig.add_subplot(1, 3, i) for i in (1, 2, 3))
    for key in [k for k in (tok[0] if tok else {}) if k not in ("step", "lr", "elapsed_s", "grad_norm")]:
        left.plot([r["step"] for r in tok], [r[key] for r in tok], label=key, lw=1)
    left.set(title="image tokenizer (VQ)", xlabel="step", yscale="log")
    left.legend(fontsize=7)
    middle.plot([r["step"] for r in vision], [r["loss"] for r in vision], label="object shape CE", lw=1)
    middle.set(title="vision tower (nats/object)", xlabel="step", yscale="log")
    middle.legend(fontsize=7)
    for key in ("gen_loss", "und_loss"):
        if lm and key in lm[0]:
            right.plot([r["step"] for r in lm], [r[key] for r in lm], label=key, lw=1)
    right.set(title="language model (nats/token)", xlabel="step", yscale="log")
    right.legend(fontsize=7)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, metadata={"Software": None})
    print(f"wrote {args.out} ({len(tok)} tokenizer, {len(vision)} vision and {len(lm)} language-model log rows)")


if __name__ == "__main__":
    main()
