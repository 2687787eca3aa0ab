#!/usr/bin/env bash
# Nightly incremental labeling: label the shards of INPUT that have no completion record in
# OUTPUT yet, then verify what is new (cheap and incremental; see `pseudolabel verify --help`).
# Safe to start while a previous night is still running:
# the OUTPUT lock makes this run exit at once (status 75) instead of overlapping.
#
# Environment:
#   INPUT        input spec (directory, glob, brace pattern or list file), e.g. s3://corpus/train/
#   OUTPUT       output root, e.g. s3://labels/train-v1
#   CONFIG       YAML config (default: conf/default.yaml only)
#   RAY_ADDRESS  cluster to run on ("auto" on a cluster node, ray://HEAD:10001 from outside);
#                unset = a local Ray on this machine
#   LOG_DIR      where the per-night log goes (default: ./logs)
#   EXTRA_ARGS   more `pseudolabel run` arguments, e.g. "--set ray.max_shard_retries=5"
#   VERIFY_ARGS  `pseudolabel verify` arguments (default --incremental; --deep re-reads every input)
#   ALLOW_PIPE   1: INPUT may be a pipe:CMD spec (adds --allow-pipe to run and verify). CMD runs in a
#                shell on every worker, so only set this when INPUT is written by you. A `pipe:` line
#                inside a list file is refused whatever ALLOW_PIPE says (docs/security.md): list
#                files are often written by other teams.
#
# Exit status: 0 labeled and verified; 1 run or verify failed; 2 usage error; 75 (EX_TEMPFAIL)
# another run holds the lock on OUTPUT (nothing was done; the next night catches up).
set -euo pipefail

: "${INPUT:?set INPUT to the input spec}"
: "${OUTPUT:?set OUTPUT to the output root}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOG_DIR="${LOG_DIR:-$REPO/logs}"
PSEUDOLABEL="${PSEUDOLABEL:-pseudolabel}"
mkdir -p "$LOG_DIR"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
log="$LOG_DIR/nightly-$stamp.log"

config_args=()
if [[ -n "${CONFIG:-}" ]]; then config_args=(--config "$CONFIG"); fi
pipe_args=()
case "${ALLOW_PIPE:-0}" in
    1) pipe_args=(--allow-pipe) ;;
    0|"") ;;
    *) echo "nightly: ALLOW_PIPE must be 0 or 1 (got '$ALLOW_PIPE')" >&2; exit 2 ;;
esac
# shellcheck disable=SC2206  # EXTRA_ARGS is split on purpose
extra=(${EXTRA_ARGS:-})

echo "nightly $stamp: labeling new shards of $INPUT into $OUTPUT (log: $log)"
set +e
# Completed shards (those with an OUTPUT/_done/NAME.json that checks: input unchanged, files as
# recorded) are skipped by `run`: only new, changed and damaged shards are labeled. The run takes
# the OUTPUT lock for its whole lifetime.
"$PSEUDOLABEL" run "$INPUT" "$OUTPUT" "${config_args[@]}" "${pipe_args[@]}" "${extra[@]}" >>"$log" 2>&1
rc=$?
set -e
if [[ $rc -ne 0 ]]; then
    if [[ $rc -eq 2 ]] && grep -q "is locked by" "$log"; then
        echo "nightly $stamp: skipped, OUTPUT is locked: $(grep -m1 'is locked by' "$log")" >&2
        exit 75
    fi
    echo "nightly $stamp: run failed with status $rc; last lines of $log:" >&2
    tail -n 20 "$log" >&2
    exit "$rc"
fi

set +e
# Cheap and incremental: only shards not verified before, and no input tar is opened (the
# completion records hold the input's keys digest and size/ETag). VERIFY_ARGS=--deep re-reads all.
# shellcheck disable=SC2206
verify_extra=(${VERIFY_ARGS:---incremental})
"$PSEUDOLABEL" verify "$OUTPUT" "$INPUT" "${config_args[@]}" "${pipe_args[@]}" "${verify_extra[@]}" \
    --json "$LOG_DIR/verify-$stamp.json" >>"$log" 2>&1
rc=$?
set -e
tail -n 8 "$log"
if [[ $rc -ne 0 ]]; then
    echo "nightly $stamp: verify found problems (status $rc); report: $LOG_DIR/verify-$stamp.json;" \
         "\`pseudolabel run INPUT OUTPUT --repair\` (same config) relabels the damaged shards" >&2
    exit 1
fi
echo "nightly $stamp: done and verified"
