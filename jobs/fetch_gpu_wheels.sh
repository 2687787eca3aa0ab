#!/usr/bin/env bash
# Download the wheels the GPU host lacks into .whl/ (ignored by git), for jobs/gpu_check.sh to carry.
# The host runs Python 3.12 with torch 2.11 / torchvision 0.26 and the packages of its CUDA image
# (numpy, pillow, pyyaml, pyarrow, pandas, fsspec, regex, tqdm, huggingface-hub, safetensors, timm,
# pytest, pytest-timeout, ...); of what the GPU check imports it lacks only these four:
#   open_clip_torch (the engine's model code), ftfy (open_clip's tokenizer), wcwidth (ftfy's),
#   braceexpand (shard lists).
# ray is not carried: its cp312 wheel is 76 MiB, over the 64 MiB that travels, and the GPU check
# needs none of it (tests, benchmark and probes use the engine and the shard stage, not Ray).
# webdataset is not imported by the package. Usage: bash jobs/fetch_gpu_wheels.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-.whl}"
py="${PYTHON:-python3}"
[ -x .venv/bin/python ] && py="${PYTHON:-.venv/bin/python}"
mkdir -p "$dest"
# Versions: open_clip as pinned in pyproject.toml (the engine reads its module structure by name);
# the others as tested here.
"$py" -m pip download --quiet --only-binary=:all: --no-deps --python-version 3.12 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d "$dest" \
  open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 braceexpand==0.1.7
total=$(du -cb "$dest"/*.whl | tail -1 | cut -f1)
ls -l "$dest"/*.whl
echo "total $((total / 1024)) KiB in $dest (limit for everything carried: 64 MiB)"
if [ "$total" -gt $((60 * 1024 * 1024)) ]; then
  echo "wheels exceed 60 MiB: they would not travel with the working tree" >&2
  exit 1
fi
