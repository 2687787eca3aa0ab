#!/usr/bin/env bash
# Download the wheels the GPU host lacks into .whl/ (ignored by git), for jobs/gpu_check.sh to carry.
# The host runs Python 3.12 with torch 2.11 / torchvision 0.26 and the packages of its CUDA image
# (numpy, pillow, pyyaml, pyarrow, pandas, fsspec, regex, tqdm, huggingface-hub, safetensors, timm,
# pytest, pytest-timeout, ...); of what the GPU check imports it lacks only these four:
#   open_clip_torch (the engine's model code), ftfy (open_clip's tokenizer), wcwidth (ftfy's),
#   braceexpand (shard lists).
# ray is not carried: its cp312 wheel is 76 MiB, over the 64 MiB that travels, and the GPU check
# needs none of it (tests, benchmark and probes use the engine and the shard stage, not Ray).
# webdataset is not imported by the package.
# Usage: bash jobs/fetch_gpu_wheels.sh [DIR] [--check]
# --check then resolves the project for Python 3.12 manylinux x86-64 (pip's dry run, nothing installed)
# and lists what the host image and the carried wheels do not provide: for the GPU check (must be
# nothing) and for the whole runtime (ray and what only it needs). torch / torchvision resolve as
# stand-ins for the image's 2.11 / 0.26 (jobs/host_image.py: this registry offers torch only as the
# 530 MiB wheel, and the image's CUDA libraries are not ours to resolve).
set -euo pipefail
cd "$(dirname "$0")/.."
check=0
args=()
for a in "$@"; do [ "$a" = --check ] && check=1 || args+=("$a"); done
dest="${args[0]:-.whl}"
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
[ "$check" = 1 ] || exit 0

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$py" jobs/host_image.py stubs "$work/stubs" >/dev/null
# The runtime requirements by name (the host's versions are its own), the carried ones as downloaded,
# torch / torchvision as the image's, and what the check runs with (pytest, pytest-timeout).
"$py" - "$work/req.txt" <<'PY'
import re, sys, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
pins = {"open_clip_torch": "==3.3.0", "torch": "==2.11.0+hostimage", "torchvision": "==0.26.0+hostimage"}
lines = []
for dep in deps + ["ftfy", "wcwidth", "braceexpand", "pytest", "pytest-timeout"]:
    name = re.split(r"[<>=!~;\s]", dep, maxsplit=1)[0]
    base = name.split("[")[0]
    lines.append(name + pins.get(base, {"ftfy": "==6.3.1", "wcwidth": "==0.9.4", "braceexpand": "==0.1.7"}.get(base, "")))
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
PY
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1 linux; do
  platforms+=(--platform "${tag}_x86_64")
done
PIP_CONSTRAINT="" "$py" -m pip install --quiet --dry-run --ignore-installed --only-binary=:all: \
  --python-version 3.12 "${platforms[@]}" --find-links "$work/stubs" --find-links "$dest" \
  --target "$work/target" --report "$work/report.json" -r "$work/req.txt"
mapfile -t roots < "$work/req.txt"
"$py" jobs/host_image.py check "$work/report.json" --carried "$dest" --roots "${roots[@]}"
