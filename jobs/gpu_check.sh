#!/usr/bin/env bash
# Every check that needs a GPU, in one run (for a short device lease): the CUDA tests, then the
# throughput benchmark of ViT-B/16 at the paper's settings, sliding windows and whole images.
# Results land in ${OUT:-gpu-check}/: pytest log and one JSON per benchmark.
#   OUT=/tmp/gpu bash jobs/gpu_check.sh
# Needs torch with CUDA, open_clip_torch, ftfy, wcwidth, braceexpand, pyyaml, pyarrow, fsspec, pillow
# and pytest; the workplace's H200 image lacks only open_clip_torch, ftfy, wcwidth and braceexpand
# (carry them as wheels and put them on PYTHONPATH first).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-check}"
mkdir -p "$out"
py="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
"$py" -m pytest -q -m gpu tests/engine/test_gpu.py 2>&1 | tee "$out/pytest-gpu.log"
for mode in slide whole; do
  extra=()
  [ "$mode" = whole ] && extra=(--set inference.slide_crop=0)
  "$py" -m pipeline.cli bench --config conf/bench/gpu_vitb16.yaml "${extra[@]}" \
    --images 256 --batch-sizes 8,32,64 --json "$out/bench-$mode.json" 2>&1 | tee "$out/bench-$mode.log"
done
