#!/bin/bash
# Offline self-RAFT / DPO arms on tiny-shapes, paired with the shipped model (issue 20; numbers in
# benchmarks/README.md "Offline self-RAFT and DPO"). Each step skips what is done, so a rerun resumes.
#   benchmarks/offline_raft_probe.sh base                       # eval images of the shipped model
#   benchmarks/offline_raft_probe.sh train-samples              # 300 training prompts x 8, judged
#   benchmarks/offline_raft_probe.sh arm NAME self|control|oracle LR [override ...]
#   python benchmarks/offline_raft_probe.py NAME ...            # paired deltas vs base
# Several arms at once: THREADS=1 for each. R=runs/offline_raft by default. MODEL=DIR probes another
# tiny-shapes export (e.g. a `unirl pretrain` run's OUT/export) in place of the shipped weights.
set -e
R=${R:-runs/offline_raft}
M=(); B=()
if [ -n "$MODEL" ]; then M=(--model "$MODEL"); B=(backbone.model="$MODEL"); fi
export OMP_NUM_THREADS=${THREADS:-2} MKL_NUM_THREADS=${THREADS:-2}
mkdir -p "$R"
[ -f "$R/ev.jsonl" ] || unirl prompts --n 300 --seed 1234 --out "$R/ev.jsonl"
[ -f "$R/tr.jsonl" ] || unirl prompts --n 300 --seed 1 --exclude "$R/ev.jsonl" --shares equal --out "$R/tr.jsonl"
case $1 in
base)
  unirl generate "${M[@]}" --prompts "$R/ev.jsonl" --group-size 4 --seed 1234 --batch-size 64 --out "$R/base"
  unirl eval geneval "$R/base" --out "$R/base_eval" ;;
train-samples)
  unirl generate "${M[@]}" --prompts "$R/tr.jsonl" --group-size 8 --seed 77 --batch-size 64 --out "$R/TS"
  unirl score "$R/TS" "${M[@]}" --reward self-ensemble --reward geneval:0 ;;
arm)
  name=$2; kind=$3; lr=$4; shift 4
  S=$R/TS
  if [ "$kind" != self ]; then  # the same images, judged by image order (control) or the detector (oracle)
    S=$R/TS_$kind; mkdir -p "$S"
    for d in "$R"/TS/0*; do ln -sfn "../TS/$(basename "$d")" "$S/$(basename "$d")"; done
    python - "$R/TS/scores.jsonl" "$S/scores.jsonl" "$kind" <<'PY'
import json, sys
src, dst, kind = sys.argv[1:]
with open(src) as f, open(dst, "w") as g:
    for line in f:
        r = json.loads(line)
        r["reward"] = -r["image_index"] if kind == "control" else float(r["rewards"]["geneval"])
        g.write(json.dumps(r) + "\n")
PY
  fi
  [ -d "$R/$name/final" ] || unirl train sft --config configs/sft/tiny_shapes_distill.yaml samples="$S" \
    optim.lr="$lr" run.out="$R/$name" "${B[@]}" "$@"
  unirl generate --model "$R/$name/final" --prompts "$R/ev.jsonl" --group-size 4 --seed 1234 --batch-size 64 \
    --out "$R/$name/eval"
  unirl eval geneval "$R/$name/eval" --out "$R/$name/eval_ge" ;;
*) echo "usage: $0 base | train-samples | arm NAME self|control|oracle LR [override ...]" >&2; exit 2 ;;
esac
