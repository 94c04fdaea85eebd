"""The tree is lint-clean: ruff, at the version pinned in pyproject.toml's test extra, with pyproject.toml's rules."""
import re
import subprocess
import sys
from importlib import metadata

from conftest import ROOT


def test_ruff_finds_nothing():
    pins = [r for r in metadata.requires("urlstm-triton") if re.match(r"ruff\s*==", r)]
    assert len(pins) == 1, pins
    pinned = re.match(r"ruff\s*==\s*([\w.]+)", pins[0]).group(1)
    assert metadata.version("ruff") == pinned, "reinstall the test extra (bash scripts/setup.sh)"
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
