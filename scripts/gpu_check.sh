#!/usr/bin/env bash
# The one prepared GPU check for the Triton kernels (issues 3, 7 and 12). Run it on a CUDA machine from the
# repository root, e.g. through the device tool:   bash scripts/gpu_check.sh
# It writes everything under $OUT (default /tmp/gpu_check), 11 files: env.txt, doctor.json/.log (issue 12:
# `python -m urlstm_triton.doctor --quick`, every kernel family x gate mode x dtype vs float64, the
# persistent kernels' self-check and its cost, URLSTM vs nn.LSTM on two shapes; first, so that a failed kernel
# shows before anything is timed), bench.json/.log (docs/design.md's five configs, bf16 + fp32, Triton vs
# reference vs cuDNN, with a float64 check first), pytest.log (every @pytest.mark.cuda test), long.json,
# long64k.json, long.log (issue 7: T=8192 chunked vs save-everything, T=65536 chunked), persistent.json/.log
# (issue 5: persistent vs step kernels). Each stage has its own time limit (sum 530 s, setup included about 8
# minutes at worst; typically less) and the tables come last.
# Needs torch + triton (+ pytest) already installed; no network.
set -u
OUT="${OUT:-/tmp/gpu_check}"
mkdir -p "$OUT"
PY="${PY:-python3}"
export PYTHONUNBUFFERED=1
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-/tmp/triton-cache}"
unset TRITON_INTERPRET
START=$(date +%s)
stage() { echo; echo "=== $1 ($(( $(date +%s) - START )) s) ==="; }

stage "environment"
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv 2>&1
  "$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'gpu', torch.cuda.get_device_name(0))"
  git log -1 --format='commit %H %s' 2>/dev/null
} 2>&1 | tee "$OUT/env.txt"

stage "install (no network: no dependencies, no build isolation)"
if ! "$PY" -c "import urlstm_triton.kernels" 2>/dev/null; then
  if ! "$PY" -m pip install -q --no-deps --no-build-isolation -e . >/tmp/install.log 2>&1; then
    echo "editable install failed; installing a copy into /tmp/urlstm-site" | tee -a "$OUT/env.txt"
    "$PY" -m pip install -q --no-deps --no-build-isolation --target /tmp/urlstm-site . >>/tmp/install.log 2>&1
    export PYTHONPATH="/tmp/urlstm-site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  tail -5 /tmp/install.log >>"$OUT/env.txt"
fi
"$PY" -c "import urlstm_triton.kernels, urlstm_triton.triton_backend as b, torch; print('triton backend available on cuda:', b.is_available(torch.device('cuda')))" \
  || { echo "cannot import the package; giving up"; exit 1; }
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
  || { echo "no CUDA device visible to torch; this script is for a GPU machine"; exit 1; }

set -o pipefail
stage "doctor (issue 12): every kernel family vs float64, the self-check of kernel='auto', vs nn.LSTM"
# its JSON is rewritten after every check, so a run cut by the time limit keeps what it checked
timeout 100 "$PY" -m urlstm_triton.doctor --quick --json "$OUT/doctor.json" 2>&1 | tee "$OUT/doctor.log" \
  | grep -vE "^(step|persistent|chunked|graphed) +[a-z]+ +[a-z0-9]+: passed$" | tail -70
DOCTOR_RC=$?

stage "benchmark: docs/design.md's five configs (check vs float64 first)"
timeout 170 "$PY" scripts/bench_kernels.py --cuda-graph --min-time 0.3 --max-reps 10 --json "$OUT/bench.json" \
  2>&1 | tee "$OUT/bench.log" | grep -E "^check|FAILED|Error" | tail -30
BENCH_RC=$?
[ "$BENCH_RC" -ne 0 ] && tail -5 "$OUT/bench.log"

stage "pytest -m cuda"
XDIST=""
"$PY" -c "import xdist" 2>/dev/null && XDIST="-n 4"
timeout 100 "$PY" -m pytest -m cuda -q -p no:cacheprovider --continue-on-collection-errors $XDIST tests \
  2>&1 | tee "$OUT/pytest.log" | tail -25
TEST_RC=$?

stage "issue 7: long sequences, chunked"
timeout 60 "$PY" scripts/bench_kernels.py --configs long-8k --dtypes bf16 --impls triton,nn.LSTM --chunk 256 \
  --chunk 1024 --cuda-graph --min-time 0 --max-reps 3 --warmup 1 --check-steps 16 --json "$OUT/long.json" \
  >"$OUT/long.log" 2>&1
timeout 50 "$PY" scripts/bench_kernels.py --configs long-64k --dtypes bf16 --impls "" --chunk 1024 --cuda-graph \
  --min-time 0 --max-reps 3 --warmup 1 --no-fwd-only --skip-check --json "$OUT/long64k.json" \
  >>"$OUT/long.log" 2>&1
tail -3 "$OUT/long.log"

stage "persistent vs step kernels (issue 5: adding, smnist, lm-1k; forced families, checked first)"
timeout 50 "$PY" scripts/bench_kernels.py --configs adding,smnist,lm-1k --dtypes bf16,fp32 --impls triton,nn.LSTM \
  --kernel step --kernel persistent --min-time 0.2 --max-reps 5 --warmup 1 --json "$OUT/persistent.json" \
  >"$OUT/persistent.log" 2>&1
tail -3 "$OUT/persistent.log"

stage "summary"
"$PY" scripts/bench_kernels.py --summarize "$OUT/persistent.json" "$OUT/long64k.json" "$OUT/long.json" "$OUT/bench.json"
echo
echo "doctor: $(grep -E '^(all checks passed|FAILED)' "$OUT/doctor.log" | head -1)"
echo "doctor rc=$DOCTOR_RC bench rc=$BENCH_RC pytest rc=$TEST_RC; total $(( $(date +%s) - START )) s; files in $OUT:"
ls "$OUT"
grep -E "passed|failed|error" "$OUT/pytest.log" | tail -3
