#!/usr/bin/env bash
# Create .venv (if missing) and install urlstm-triton editable with its test extra, which holds the train and
# plots extras: everything the jobs, the tools and the tests use. A second run re-checks and installs only what
# changed. TORCH_SPEC picks the torch build (default torch==2.13.0: a CPU build on the project's machines; on a
# GPU machine install the CUDA build you want first, or set TORCH_SPEC).
# Any failed step stops the script with pip's error and its exit status; the last step imports every
# distribution that the installed extras require.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

pip_install() {
    # A pip configuration with extra local index directories makes pip warn "WARNING: Location '...' is
    # ignored" for each package one of them lacks: drop those lines. pip's exit status still decides (pipefail).
    .venv/bin/python -m pip install -q "$@" 2>&1 | sed -e "/^WARNING: Location '.*' is ignored/d"
}

if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
pip_install --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    pip_install "${TORCH_SPEC:-torch==2.13.0}"
fi
pip_install -e ".[test]"
.venv/bin/python -m urlstm_triton.extras test
