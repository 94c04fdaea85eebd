#!/usr/bin/env bash
# The one prepared GPU check of the Triton kernels (issues 3, 5, 7, 11, 12). Run it on a CUDA machine from the
# repository root, e.g. through the device tool:   bash scripts/gpu_check.sh
#
# Two stages, inside one time budget (GPU_CHECK_BUDGET seconds, default 420; every step's limit is cut to what
# is left, and what does not fit is skipped and named):
#  1. checks, all at once in parallel processes (correctness does not mind sharing the GPU, and each process
#     compiles its kernels into the shared Triton cache, so stage 2 starts warm):
#     the doctor (`python -m urlstm_triton.doctor --quick`, one process per dtype: every kernel family x gate
#     mode vs float64, the persistent self-check), bench_kernels.py --check-only for every row stage 2 times
#     (vs float64), and `pytest -m cuda`;
#  2. timings, one after another, most important first: the five configs in bf16 (Triton with tuned and with
#     the cost model's tiles, each eager and graphed, beside cuDNN nn.LSTM: issue 11's and 3's targets),
#     persistent vs step kernels (issue 5), where each kernel's time goes (profile_kernels.py, beside the cost
#     model), long sequences chunked (issue 7), the reference loop (issue 3's 30x), fp32 (exact and tf32), and
#     the LM's training throughput (issue 4: UR-LSTM eager and graphed vs nn.LSTM, wt103 shape).
# `bash scripts/gpu_check.sh tiles` runs, instead of the above, the tile sweep: `pytest -m cuda` and every
# sweep row checked vs float64 (stage 1), then lm-seed, big-batch and lm-1k timed over the planner's 4 best
# block shapes x SWEEP_K_STAGES of bench_kernels.py, replayed from CUDA graphs, beside the planner's own pick.
# Everything lands in $OUT (default /tmp/gpu_check) as summary.txt (what is printed last) and gpu_check.tar.gz
# (every JSON and log); the device tool brings back at most 8 files.
# Needs torch + triton (+ pytest, pytest-xdist) installed; no network.
set -u
MODE="${1:-full}"
case "$MODE" in full|tiles) ;; *) echo "usage: bash scripts/gpu_check.sh [full|tiles]"; exit 2;; esac
OUT="${OUT:-/tmp/gpu_check}"
W="${GPU_CHECK_WORK:-/tmp/gpu_check_work}"
BUDGET="${GPU_CHECK_BUDGET:-420}"
rm -rf "$W" && mkdir -p "$OUT" "$W"
PY="${PY:-python3}"
export PYTHONUNBUFFERED=1
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-/tmp/triton-cache}"
export URLSTM_CACHE_DIR="$W/selfcheck-cache"
unset TRITON_INTERPRET
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }
stage() { echo; echo "=== $1 ($(elapsed) s) ==="; }
# limit N: N seconds, or what is left of the budget if less; 0 when less than 15 s are left
limit() { local left=$(( BUDGET - $(elapsed) )); [ "$left" -lt 15 ] && { echo 0; return; }; echo $(( $1 < left ? $1 : left )); }
bundle() { tar -czf "$OUT/gpu_check.tar.gz" -C "$W" . 2>/dev/null; }
trap bundle EXIT
BENCH=("$PY" scripts/bench_kernels.py)
SKIPPED=()

stage "environment"
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv 2>&1
  "$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'gpu', torch.cuda.get_device_name(0), 'sms', torch.cuda.get_device_properties(0).multi_processor_count)"
  git log -1 --format='commit %H %s' 2>/dev/null
  nproc
} 2>&1 | tee "$W/env.txt"

stage "install (no network: no dependencies, no build isolation)"
if ! "$PY" -c "import urlstm_triton.kernels" 2>/dev/null; then
  if ! "$PY" -m pip install -q --no-deps --no-build-isolation -e . >"$W/install.log" 2>&1; then
    echo "editable install failed; installing a copy into /tmp/urlstm-site" | tee -a "$W/env.txt"
    "$PY" -m pip install -q --no-deps --no-build-isolation --target /tmp/urlstm-site . >>"$W/install.log" 2>&1
    export PYTHONPATH="/tmp/urlstm-site${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi
"$PY" -c "import urlstm_triton.kernels, urlstm_triton.triton_backend as b, torch; print('triton backend available on cuda:', b.is_available(torch.device('cuda')))" \
  || { echo "cannot import the package; giving up"; exit 1; }
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
  || { echo "no CUDA device visible to torch; this script is for a GPU machine"; exit 1; }

FIVE=lm-seed,lm-1k,smnist,adding,big-batch
SWEPT=(lm-seed big-batch lm-1k)
stage "1. checks in parallel (bench rows vs float64, pytest -m cuda$([ "$MODE" = full ] && echo ', doctor x 3 dtypes'))"
LIM=$(limit 150)
[ "$LIM" -eq 0 ] && LIM=1  # `timeout 0` would mean no limit at all
job() { local name=$1; shift; ( timeout "$LIM" "$@" >"$W/$name.log" 2>&1; echo $? >"$W/$name.rc" ) & }
CHECK=(--check-only --check-steps 16 --dtypes bf16 --impls triton)
if [ "$MODE" = tiles ]; then
  for c in "${SWEPT[@]}"; do
    job "check-$c" "${BENCH[@]}" "${CHECK[@]}" --configs "$c" --cuda-graph --tile-sweep 4 --json "$W/check-$c.json"
  done
else
  for d in bf16 fp32 fp16; do
    job "doctor-$d" "$PY" -m urlstm_triton.doctor --quick --no-timing --dtypes "$d" --json "$W/doctor-$d.json"
  done
  job check-lm-seed "${BENCH[@]}" "${CHECK[@]}" --configs lm-seed --cuda-graph --model-tiles --json "$W/check-lm-seed.json"
  job check-big-batch "${BENCH[@]}" "${CHECK[@]}" --configs big-batch --cuda-graph --model-tiles \
    --json "$W/check-big-batch.json"
  job check-small "${BENCH[@]}" "${CHECK[@]}" --configs lm-1k,smnist,adding --cuda-graph --model-tiles --kernel step \
    --kernel persistent --json "$W/check-small.json"
  job check-long "${BENCH[@]}" "${CHECK[@]}" --configs long-8k --chunk 256 --chunk 1024 --cuda-graph --json "$W/check-long.json"
  job check-fp32 "${BENCH[@]}" --check-only --check-steps 16 --dtypes fp32 --impls triton --tf32 --configs "$FIVE" \
    --json "$W/check-fp32.json"
fi
XDIST=""
"$PY" -c "import xdist" 2>/dev/null && XDIST="-n 4"
job pytest "$PY" -m pytest -m cuda -v -p no:cacheprovider --continue-on-collection-errors $XDIST tests
wait
for f in "$W"/*.rc; do n=$(basename "$f" .rc); echo "$n: exit $(cat "$f")$([ "$(cat "$f")" = 124 ] && echo ' (time limit)')"; done
grep -hE "^(step|persistent|chunked|graphed) +[a-z]+ +[a-z0-9]+: FAILED" "$W"/doctor-*.log | head -20
grep -hE "FAILED" "$W"/check-*.log | head -20
grep -E "passed|failed" "$W/pytest.log" | tail -2

stage "2. timings, one after another"
timed() {  # timed NAME SECONDS CMD...: run CMD under what is left of the budget, or skip it
  local name=$1 lim; lim=$(limit "$2"); shift 2
  if [ "$lim" -eq 0 ]; then SKIPPED+=("$name"); echo "$name: skipped (budget spent)"; return; fi
  echo "--- $name (limit $lim s, at $(elapsed) s)"
  timeout "$lim" "$@" >"$W/$name.log" 2>&1; local rc=$?
  echo "$name: exit $rc$([ $rc = 124 ] && echo ' (time limit)')"
}
TIME=(--skip-check --min-time 0.3 --max-reps 10 --warmup 2)
if [ "$MODE" = tiles ]; then
  for c in "${SWEPT[@]}"; do
    timed "tiles-$c" 70 "${BENCH[@]}" --skip-check --min-time 0.1 --max-reps 5 --warmup 2 --configs "$c" --dtypes bf16 \
      --impls triton --cuda-graph --tile-sweep 4 --json "$W/tiles-$c.json"
  done
else
  timed bench 90 "${BENCH[@]}" "${TIME[@]}" --configs "$FIVE" --dtypes bf16 --impls triton,nn.LSTM --model-tiles \
    --cuda-graph --json "$W/bench.json"
  timed persistent 45 "${BENCH[@]}" "${TIME[@]}" --configs adding,smnist,lm-1k --dtypes bf16 --impls "" \
    --kernel step --kernel persistent --cuda-graph --json "$W/persistent.json"
  timed profile 45 "$PY" scripts/profile_kernels.py --configs "$FIVE" --json "$W/profile.json"
  timed long 45 "${BENCH[@]}" --skip-check --min-time 0 --max-reps 3 --warmup 1 --configs long-8k --dtypes bf16 \
    --impls triton,nn.LSTM --chunk 256 --chunk 1024 --cuda-graph --json "$W/long.json"
  timed long64k 30 "${BENCH[@]}" --skip-check --min-time 0 --max-reps 2 --warmup 1 --configs long-64k --dtypes bf16 \
    --impls "" --chunk 1024 --cuda-graph --no-fwd-only --json "$W/long64k.json"
  timed reference 45 "${BENCH[@]}" --skip-check --min-time 0 --max-reps 2 --warmup 1 --configs "$FIVE" --dtypes bf16 \
    --impls reference --no-fwd-only --json "$W/reference.json"
  timed fp32 45 "${BENCH[@]}" "${TIME[@]}" --configs "$FIVE" --dtypes fp32 --impls triton,nn.LSTM --tf32 \
    --json "$W/fp32.json"
  timed lm 60 "$PY" scripts/bench_lm_throughput.py --rnns urlstm urlstm-graph lstm --steps 10 --json "$W/lm.json"
fi

stage "summary"
{
  cat "$W/env.txt"
  for f in "$W"/*.rc; do echo "$(basename "$f" .rc): exit $(cat "$f")"; done
  echo "doctor: $(cat "$W"/doctor-*.log | grep -hE '^(all checks passed|FAILED)' | tr '\n' ' ')"
  grep -E "passed|failed" "$W/pytest.log" | tail -1
  grep -h "FAILED" "$W"/pytest.log | head -10
  [ ${#SKIPPED[@]} -gt 0 ] && echo "skipped for the budget: ${SKIPPED[*]}"
  "$PY" scripts/bench_kernels.py --summarize "$W"/check-*.json | grep -E "checks,|FAILED"
  cat "$W/profile.log" "$W/lm.log" 2>/dev/null
  "$PY" -c "from urlstm_triton import tuning; print(tuning.summarize_cache())"  # incl. the library-GEMM step
  TABLES=(reference long64k long fp32 persistent bench)
  [ "$MODE" = tiles ] && TABLES=("${SWEPT[@]/#/tiles-}")
  FILES=(); for t in "${TABLES[@]}"; do FILES+=("$W/$t.json"); done
  "$PY" scripts/bench_kernels.py --summarize "${FILES[@]}" | grep -vE "^  check "
  echo "total $(elapsed) s"
} 2>&1 | tee "$OUT/summary.txt"
