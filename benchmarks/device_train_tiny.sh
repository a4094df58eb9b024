#!/usr/bin/env bash
# Train the shipped fairgen-tiny checkpoint on one GPU and measure it: what produced
# src/fairgen/models/tiny_weights/ (docs/tiny.md). Run from the repository root on a CUDA machine with
# fairgen's dependencies importable; writes the fp16 checkpoint, the training log and the eval numbers
# to ${OUT:-out_tiny}.
set -euo pipefail
OUT=${OUT:-out_tiny}
WORK=${WORK:-/tmp/tiny_full}  # the fp32 checkpoint
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/card.txt"
tiny() { python3 -c "from fairgen.models.tiny.cli import tiny_app; tiny_app()" "$@"; }
start=$(date +%s)
tiny train --device cuda --out "$WORK" "$@"
echo "trained in $(( $(date +%s) - start )) s"
grep lm-eval "$WORK/train_log.jsonl" | tail -4
tiny eval --model "$WORK" --device cuda --out "$OUT/eval.json"
# The shipped copy: fp16 weights (they load into the fp32 model), half the size.
python3 - "$OUT" "$WORK" <<'PY'
import shutil, sys, torch
from safetensors.torch import load_file, save_file
out, work = sys.argv[1], sys.argv[2]
for name in ("tokenizer.safetensors", "lm.safetensors"):
    state = load_file(f"{work}/{name}")
    save_file({k: v.to(torch.float16).contiguous() for k, v in state.items()}, f"{out}/{name}")
for name in ("config.json", "train_log.jsonl"):
    shutil.copy(f"{work}/{name}", f"{out}/{name}")
PY
ls -la "$OUT"
