#!/usr/bin/env bash
# The GPU checks of one session, as one prepared script for a lent GPU machine (run from the repo root;
# results go to $OUT). Session 2: Janus-Pro-1B-shaped sampler benchmark (random weights, bf16), the
# tiny-shapes language-model stage trained on the GPU (same recipe, lm.device=cuda), and its quality.
# Needs transformers 5.24 beside the machine's torch: .devcarry/tf.zip (zip of site-packages'
# transformers + huggingface_hub, made on the dev machine) is unpacked to /tmp/site when present.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
if [ -f .devcarry/tf.zip ]; then rm -rf /tmp/site && mkdir -p /tmp/site && (cd /tmp/site && python3 -m zipfile -e "$OLDPWD/.devcarry/tf.zip" .); fi
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1
unirl() { python3 -c 'import sys; from unirl_kit.cli import main; sys.argv[0] = "unirl"; main()' "$@"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
timeout 150 python3 benchmarks/generate_throughput.py --size gpu --device cuda --dtype bfloat16 \
    --bandwidth-gbs 3350 --json "$OUT/generate_gpu.json" 2>&1 | tee "$OUT/generate_gpu.log"
mkdir -p runs/gpu && cp -r artifacts/pretrain/tiny_shapes/tokenizer runs/gpu/
timeout "${LM_SECONDS:-270}" python3 -c 'import sys; from unirl_kit.cli import main; sys.argv[0] = "unirl"; main()' \
    pretrain --config configs/pretrain/tiny_shapes.yaml out=runs/gpu stages=[lm] lm.device=cuda 2>&1 | grep -v "Writing\|Loading" | tail -5
cp runs/gpu/lm/log.jsonl "$OUT/lm_log.jsonl"
unirl pretrain --config configs/pretrain/tiny_shapes.yaml out=runs/gpu stages=[export] 2>&1 | grep -v "Writing\|Loading" | tail -8
tar -C runs/gpu -cf "$OUT/export.tar" export
timeout 120 python3 benchmarks/tiny_shapes_quality.py --model runs/gpu/export --device cuda --out runs/gpu/quality 2>&1 | tail -8
cp runs/gpu/quality/quality.json "$OUT/" 2>/dev/null
tar -C runs/gpu/quality -cf "$OUT/quality_rows.tar" understanding_rows.jsonl geneval/summary.json 2>/dev/null
echo done
