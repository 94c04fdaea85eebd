"""The wheel: built from a copy of the source, installed (not editable) into a fresh environment that holds only the
core dependencies, where the layer must import and train and the jobs must ask for the train extra.

How the fresh environment gets torch without downloading it (several GB for a CUDA build): a venv made with
``--without-pip`` whose site-packages holds one ``.pth`` file naming a directory of symbolic links to exactly the
distributions that torch, numpy and triton need, taken from the project's own environment (their packages and
their ``.dist-info``, so pip and importlib.metadata see them as installed). The wheel is then installed by pip
*with* dependency resolution but ``--no-index`` and no pip configuration: pip can satisfy the wheel's requirements
only from what is there, so if the core install needed anything else (accelerate, datasets, ...) the install would
fail. A venv with ``--system-site-packages`` cannot work here (torch is not in the system Python), and installing
torch's wheel from the local cache takes minutes on two cores; the links take well under a second.
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from conftest import ROOT

pytestmark = pytest.mark.wheel

CORE = ("torch", "triton", "numpy", "filelock")  # filelock: the self-check cache's lock (a torch dependency too)
NOT_IN_CORE = ("accelerate", "datasets", "sentencepiece", "tensorboard", "tqdm", "yaml", "matplotlib")
SOURCE_IGNORE = shutil.ignore_patterns(".git", ".venv", "runs", ".cache", "build", "dist", "*.egg-info",
                                       "__pycache__", ".pytest_cache", "outputs", "data", "results")


def _pip_env():
    """pip with no configuration file (this machine's names local wheel directories and indexes) and no index."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def _run(cmd, **kw):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kw)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def _closure(names):
    """The installed distributions ``names`` need, themselves included (markers evaluated here, extras skipped)."""
    seen, todo = {}, list(names)
    while todo:
        dist = metadata.distribution(todo.pop())
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in seen:
            continue
        seen[key] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def _link_core(shim: Path) -> list:
    """Symbolic links in ``shim`` to the top-level files and directories of the core's distributions."""
    dists = _closure(CORE)
    shim.mkdir()
    for dist in dists.values():
        tops = {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops - {"__pycache__"}:
            target = Path(dist.locate_file(top))
            if target.exists() and not (shim / top).exists():
                (shim / top).symlink_to(target)
    return sorted(dists)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel, built without build isolation (offline) from a copy of the source tree (so no stale build/
    directory of the checkout can leak into it)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=SOURCE_IGNORE, symlinks=True)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp / "dist", src],
         env=_pip_env())
    (whl,) = (tmp / "dist").glob("urlstm_triton-*.whl")
    return whl


@pytest.fixture(scope="module")
def fresh(wheel, tmp_path_factory):
    """A fresh venv that sees only the core dependencies, with the wheel installed: its python and bin/."""
    tmp = tmp_path_factory.mktemp("fresh")
    env_dir = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", env_dir])
    python = env_dir / "bin" / "python"
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    linked = _link_core(tmp / "core")
    (Path(purelib) / "core_dependencies.pth").write_text(f"{tmp / 'core'}\n")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-cache-dir", wheel], env=_pip_env())
    _run([sys.executable, "-m", "pip", "--python", python, "check"], env=_pip_env())
    return python, linked


def test_wheel_holds_every_module_and_declares_only_the_core(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for src_dir, package in (("urlstm_triton", "urlstm_triton"), ("kernels", "urlstm_triton/kernels"),
                             ("scripts", "urlstm_triton/scripts")):
        for path in (ROOT / src_dir).rglob("*.py"):
            if "__pycache__" not in path.parts:
                rel = path.relative_to(ROOT / src_dir).as_posix()
                assert f"{package}/{rel}" in names, f"{src_dir}/{rel} is missing from the wheel"
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    requires = [Requirement(line.split(":", 1)[1].strip()) for line in meta.splitlines()
                if line.startswith("Requires-Dist:")]
    core = sorted(r.name for r in requires if r.marker is None or "extra" not in str(r.marker))
    assert core == sorted(CORE)
    scripts = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/entry_points.txt")))
    assert b"urlstm-lm = urlstm_triton.cli:lm" in scripts


CHECK_LAYER = textwrap.dedent("""
    import json, os, sys
    from importlib import metadata
    import torch
    from torch import nn
    import urlstm_triton
    from urlstm_triton import URLSTM

    result = {"file": urlstm_triton.__file__, "version": metadata.version("urlstm-triton"),
              "__version__": urlstm_triton.__version__}
    torch.manual_seed(0)
    # classic mode equals nn.LSTM (outputs and a weight gradient): the installed layer computes what it should
    lstm = nn.LSTM(5, 7, num_layers=2).double()
    ours = URLSTM.from_lstm(lstm, backend="reference")
    x = torch.randn(6, 3, 5, dtype=torch.float64)
    lstm(x)[0].square().sum().backward()
    out, (h, c) = ours(x)
    out.square().sum().backward()
    result["lstm_out"] = float((out - lstm(x)[0]).abs().max())
    result["lstm_grad"] = float((ours.weight_hh_l0.grad - lstm.weight_hh_l0.grad).abs().max())
    # the UR-LSTM trains: forward + backward on the reference backend
    ur = URLSTM(4, 16, num_layers=2, backend="reference")
    y, _ = ur(torch.randn(5, 2, 4))
    y.sum().backward()
    result["ur_grads_finite"] = all(bool(torch.isfinite(p.grad).all()) for p in ur.parameters())
    # the installed kernels run (Triton's CPU interpreter) and agree with the reference
    tri = URLSTM(4, 16, backend="triton")
    ref = URLSTM(4, 16, backend="reference")
    ref.load_state_dict(tri.state_dict())
    xs = torch.randn(3, 2, 4)
    result["triton_vs_reference"] = float((tri(xs)[0] - ref(xs)[0]).abs().max())
    import urlstm_triton.kernels
    result["kernels_file"] = urlstm_triton.kernels.__file__
    result["absent"] = []
    for name in sys.argv[1:]:
        try:
            __import__(name)
        except ModuleNotFoundError:
            result["absent"].append(name)
    print(json.dumps(result))
""")


def test_core_install_runs_the_layer_and_pulls_no_training_stack(fresh, tmp_path):
    python, linked = fresh
    assert "accelerate" not in linked and "datasets" not in linked  # the environment itself holds only the core
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = _run([python, "-c", CHECK_LAYER, *NOT_IN_CORE], cwd=tmp_path, env=env)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    assert Path(res["file"]).is_relative_to(site), f"urlstm_triton imported from {res['file']}, not the wheel"
    assert Path(res["kernels_file"]) == site / "urlstm_triton" / "kernels" / "__init__.py"
    assert res["version"] == res["__version__"]
    assert res["lstm_out"] < 1e-12 and res["lstm_grad"] < 1e-10
    assert res["ur_grads_finite"]
    assert res["triton_vs_reference"] < 1e-5
    assert res["absent"] == list(NOT_IN_CORE)
    listed = _run([sys.executable, "-m", "pip", "--python", python, "list", "--format", "json"], env=_pip_env())
    installed = {d["name"].lower() for d in json.loads(listed.stdout)}
    assert "urlstm-triton" in installed and not installed & {"accelerate", "datasets"}


@pytest.mark.parametrize("command", [["bin/urlstm-lm", "--help"], ["train/synthetic.py", "--help"]])
def test_commands_without_the_train_extra_say_what_to_install(fresh, tmp_path, command):
    python, _ = fresh
    first, rest = command[0], command[1:]
    cmd = [python.parent / first[len("bin/"):]] if first.startswith("bin/") else [python, ROOT / first]
    proc = subprocess.run([str(c) for c in cmd + rest], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "pip install 'urlstm-triton[train" in lines[0] and "accelerate" in lines[0], lines[0]
    assert proc.stdout == ""
