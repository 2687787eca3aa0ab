#!/usr/bin/env bash
# The GPU check in two commands, each under 5 minutes (its step limits add up to <= 270 s), each
# with its own summary.json, so that a 15-minute lease holds both and a rerun:
#   throughput  the numbers that matter most, first. install the carried wheels (.whl/, from
#               jobs/fetch_gpu_wheels.sh); env (imports, versions, the GPU -> env.json); agreement
#               (tests/engine/test_gpu.py: float32 with TF32 off against the golden labels, bf16 /
#               fp16 / TF32 against float32 -> agreement.log); throughput (ViT-B/16 at the paper's
#               setting in bf16 and float32: engine images/s per batch size and end to end through
#               the shard stage, bf16 vs float32 pixel agreement, whole-image bf16 -> throughput.json)
#   profile     install; probe (device time per stage, CUDA events -> probe.json); compile (bf16
#               with and without inference.compile_trunk, compile time included -> compile.json);
#               codecs (decode and mask PNG encode per core -> codecs.json); idle (one shard end to
#               end, NVML utilisation -> idle.json); gpu_tests (the other gpu tests: PAMR kernels,
#               two engines, two processes, the deferred copy -> gpu-tests.log)
# No single-image passes of the authors' structure run on the GPU: the CPU bench measures that ratio.
# Each step runs under its own `timeout`; summary.json lists every step with status and seconds,
# and the headline numbers; check.log has everything printed. At most 8 files, as the device returns.
#   OUT=/tmp/gpu1 bash jobs/gpu_check.sh throughput          # on the GPU host
#   OUT=/tmp/gpu2 bash jobs/gpu_check.sh profile
#   GPU_CHECK_DRY_RUN=1 OUT=/tmp/dry bash jobs/gpu_check.sh throughput   # the same plumbing on CPU
set -uo pipefail
cd "$(dirname "$0")/.."
mode="${1:-}"
case "$mode" in
  throughput|profile) ;;
  *) echo "usage: OUT=DIR bash jobs/gpu_check.sh throughput|profile" >&2; exit 2 ;;
esac
out="${OUT:-gpu-check-$mode}"
dry="${GPU_CHECK_DRY_RUN:-0}"
py="${PYTHON:-python3}"
[ "$dry" = 1 ] && [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && py=.venv/bin/python
mkdir -p "$out"
rm -f "$out"/{summary.json,check.log,steps.tsv,env.json,agreement.log,throughput.json,gpu-tests.log,probe.json,compile.json,codecs.json,idle.json}
site="$(mktemp -d)/site"
trap 'rm -rf "$(dirname "$site")"' EXIT
export PYTHONUNBUFFERED=1 PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
flags=()
[ "$dry" = 1 ] && flags=(--dry-run)

# The dry run's limits are scaled (GPU_CHECK_DRY_SCALE, default 6): 2 shared cores load torch and
# build models several times slower than the GPU host's 16, and Inductor compiles the trunk on a CPU
# in 1-3 minutes (the compile step: 196 s under a load of 24 here).
scale=1
[ "$dry" = 1 ] && scale="${GPU_CHECK_DRY_SCALE:-6}"

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

gpu_tests() {  # gpu_tests LOG PYTEST_K: the gpu tests selected by -k, on CPU in the dry run
  local pre=()
  [ "$dry" = 1 ] && pre=(env PSEUDOLABEL_GPU_TEST_DEVICE=cpu)
  "${pre[@]}" "$py" -m pytest -q -p no:cacheprovider -rA -m gpu tests/engine/test_gpu.py -k "$2" \
    --timeout $((60 * scale)) >"$out/$1" 2>&1
  local rc=$?
  tail -n 3 "$out/$1"
  return $rc
}
export -f install_wheels gpu_tests
export py site out dry scale

host=()
# Dry run with carried wheels: hide what the GPU host's image lacks, so the imports prove the list.
[ "$dry" = 1 ] && compgen -G ".whl/*.whl" >/dev/null && host=(--host-image --carried "$site")
[ "$dry" = 0 ] && nvidia-smi >>"$out/check.log" 2>&1

AGREEMENT="golden or mixed_precision"
if [ "$mode" = throughput ]; then
  step install 20 bash -c install_wheels
  step env 50 "$py" jobs/gpu_check.py env --out "$out" "${flags[@]}" "${host[@]}"
  step agreement 80 bash -c "gpu_tests agreement.log '$AGREEMENT'"
  step throughput 120 "$py" jobs/gpu_check.py throughput --out "$out" "${flags[@]}"
else
  step install 20 bash -c install_wheels
  step probe 45 "$py" jobs/gpu_check.py probe --out "$out" "${flags[@]}"
  step compile 80 "$py" jobs/gpu_check.py compile --out "$out" "${flags[@]}"
  step codecs 15 "$py" jobs/gpu_check.py codecs --out "$out" "${flags[@]}"
  step idle 45 "$py" jobs/gpu_check.py idle --out "$out" "${flags[@]}"
  step gpu_tests 55 bash -c "gpu_tests gpu-tests.log 'not ($AGREEMENT)'"
fi
"$py" jobs/gpu_check.py summary --out "$out" --mode "$mode" "${flags[@]}" && cat "$out/summary.json"
ls "$out"
