#!/usr/bin/env bash
# Create .venv (if missing) and install urlstm-triton with its test extra. Idempotent: a second run only
# re-checks. TORCH_SPEC picks the torch build (default torch==2.13.0: a CPU build on the project's machines;
# on a GPU machine install the CUDA build you want first, or set TORCH_SPEC).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v -i "^warning: location" || true
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}" 2>&1 | grep -v -i "^warning: location" || true
fi
.venv/bin/python -m pip install -q -e ".[test]" 2>&1 | grep -v -i "^warning: location" || true
.venv/bin/python -c "import torch, urlstm_triton; print(f'urlstm-triton {urlstm_triton.__version__} ready (torch {torch.__version__})')"
