#!/usr/bin/env bash
# Every check that needs a GPU, in one run of about 7 minutes (for a short device lease):
#   install  the carried wheels (.whl/, from jobs/fetch_gpu_wheels.sh) into a temporary folder
#   env      imports, torch / CUDA / cuDNN / cuSPARSE versions, the GPU             -> env.json
#   gpu_tests  tests/engine/test_gpu.py: fp32 vs golden labels, bf16 / fp16 agreement, PAMR kernels,
#            two processes on one GPU                                              -> gpu-tests.log
#   bench    ViT-B/16 at the paper's settings: sliding and whole image, batch sizes, precisions;
#            bf16 batch 32 with and without inference.compile_trunk (compile included) -> bench.json
#   probe    device time per stage: trunk, heads, PAMR per kernel, post-processing, copies -> probe.json
#   codecs   decode (full, JPEG draft) and mask PNG encode per zlib level, per core  -> codecs.json
#   idle     the shard stage end to end: share of wall time the engine / GPU waits   -> idle.json
# Each step runs under its own `timeout`; summary.json lists every step with status and seconds;
# check.log has everything printed. At most 8 files, as the device returns.
#   OUT=/tmp/gpu bash jobs/gpu_check.sh                      # on the GPU host
#   GPU_CHECK_DRY_RUN=1 OUT=/tmp/dry bash jobs/gpu_check.sh  # the same plumbing on CPU, tiny sizes
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-check}"
dry="${GPU_CHECK_DRY_RUN:-0}"
py="${PYTHON:-python3}"
[ "$dry" = 1 ] && [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && py=.venv/bin/python
mkdir -p "$out"
rm -f "$out"/{summary.json,check.log,steps.tsv,env.json,gpu-tests.log,bench.json,probe.json,codecs.json,idle.json}
site="$(mktemp -d)/site"
trap 'rm -rf "$(dirname "$site")"' EXIT
export PYTHONUNBUFFERED=1 PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
flags=()
[ "$dry" = 1 ] && flags=(--dry-run)

# The dry run's limits are scaled (GPU_CHECK_DRY_SCALE, default 3): 2 shared cores load torch and
# build models several times slower than the GPU host's 16.
scale=1
[ "$dry" = 1 ] && scale="${GPU_CHECK_DRY_SCALE:-3}"

step() {  # step NAME LIMIT_S COMMAND...: run under timeout, append "name status seconds limit rc"
  local name=$1 limit=$(( $2 * scale )) start rc status
  shift 2
  start=$(date +%s.%N)
  echo "== $name (limit ${limit}s) $(date -u +%H:%M:%S)" | tee -a "$out/check.log"
  timeout -k 5 "$limit" "$@" >>"$out/check.log" 2>&1
  rc=$?
  case $rc in 0) status=ok ;; 124|137) status=timeout ;; *) status=failed ;; esac
  local secs
  secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$secs" "$limit" "$rc" >>"$out/steps.tsv"
  echo "   $name: $status in ${secs}s" | tee -a "$out/check.log"
}

# Functions run under `timeout` through `bash -c`, so they and what they read are exported.
install_wheels() {
  shopt -s nullglob
  local wheels=(.whl/*.whl)
  if [ ${#wheels[@]} -eq 0 ]; then
    echo "no wheels in .whl/: using what is installed"
    return 0
  fi
  "$py" -m pip install --quiet --no-index --no-deps --target "$site" "${wheels[@]}" && ls "$site"
}

gpu_tests() {
  local pre=()
  [ "$dry" = 1 ] && pre=(env PSEUDOLABEL_GPU_TEST_DEVICE=cpu)
  "${pre[@]}" "$py" -m pytest -q -p no:cacheprovider -rA -m gpu tests/engine/test_gpu.py --timeout $((90 * scale)) \
    >"$out/gpu-tests.log" 2>&1
  local rc=$?
  tail -n 3 "$out/gpu-tests.log"
  return $rc
}
export -f install_wheels gpu_tests
export py site out dry scale

host=()
# Dry run with carried wheels: hide what the GPU host's image lacks, so the imports prove the list.
[ "$dry" = 1 ] && compgen -G ".whl/*.whl" >/dev/null && host=(--host-image --carried "$site")
[ "$dry" = 0 ] && nvidia-smi >>"$out/check.log" 2>&1

step install 30 bash -c install_wheels
step env 60 "$py" jobs/gpu_check.py env --out "$out" "${flags[@]}" "${host[@]}"
step gpu_tests 100 bash -c gpu_tests
step bench 220 "$py" jobs/gpu_check.py bench --out "$out" "${flags[@]}"
step probe 50 "$py" jobs/gpu_check.py probe --out "$out" "${flags[@]}"
step codecs 20 "$py" jobs/gpu_check.py codecs --out "$out" "${flags[@]}"
step idle 45 "$py" jobs/gpu_check.py idle --out "$out" "${flags[@]}"
"$py" jobs/gpu_check.py summary --out "$out" "${flags[@]}" && cat "$out/summary.json"
ls "$out"
