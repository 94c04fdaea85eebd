"""The project as something people install: nothing outside the repository, one version, a core that imports
without the extras, the one-line stop of a job whose extra is missing, console scripts, a setup that fails loudly.
(The wheel itself: tests/test_wheel.py.)"""
import importlib
import os
import re
import shutil
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

import urlstm_triton
from conftest import ROOT
from urlstm_triton import cli, extras

PYPROJECT = (ROOT / "pyproject.toml").read_text()
OUTSIDE = "../" + "shared"  # spelt in two pieces so that this file does not name it
BINARY_SUFFIXES = {".png", ".gz", ".whl", ".pt", ".bin", ".model", ".parquet", ".npz"}


def tracked_files():
    proc = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True)
    if proc.returncode == 0:
        return [ROOT / p for p in proc.stdout.decode().split("\0") if p]
    skip = {".git", ".venv", "runs", ".cache", "build", "dist", "__pycache__", ".pytest_cache", "outputs"}
    return [p for p in ROOT.rglob("*") if p.is_file() and not skip & set(p.relative_to(ROOT).parts)]


def test_no_tracked_file_points_outside_the_repository():
    """A clone has no shared/ folder beside it (our build machines do): nothing tracked may read or cite one."""
    offenders = []
    for path in tracked_files():
        if path.suffix in BINARY_SUFFIXES or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        offenders += [f"{path.relative_to(ROOT)}:{n}" for n, line in enumerate(text.splitlines(), 1)
                      if OUTSIDE in line]
    assert not offenders, f"these lines name {OUTSIDE}: " + ", ".join(offenders)


def test_the_version_is_written_once():
    project = PYPROJECT.split("\n[project]\n", 1)[1].split("\n[", 1)[0]  # the [project] table
    assert re.search(r'^dynamic = \["version"\]', project, re.M) and not re.search(r"^version\s*=", project, re.M)
    assert re.search(r'^version = \{ attr = "urlstm_triton.__version__" \}', PYPROJECT, re.M)
    assert metadata.version("urlstm-triton") == urlstm_triton.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", urlstm_triton.__version__)


def test_extras_hold_what_the_jobs_and_tests_need():
    # filelock: the kernel self-check cache's lock (torch depends on it as well)
    assert extras.requirements(None) == ["torch", "triton", "numpy", "filelock"]
    train = extras.requirements("train")
    assert {"accelerate", "datasets", "sentencepiece", "tensorboard", "tqdm", "pyyaml"} <= set(train)
    assert extras.requirements("plots") == ["matplotlib"]
    test = extras.requirements("test")
    assert set(train) | {"matplotlib", "pytest", "ruff"} <= set(test)  # urlstm-triton[train,plots] expanded
    assert set(test) <= set(extras.requirements("all"))


def test_requirement_markers_are_evaluated_here(monkeypatch):
    declared = ['triton>=3.0; platform_system == "Nowhere"', "numpy", "torch>=2.4",
                'foo; sys_platform == "nowhere" and extra == "train"', 'bar>=1; extra == "train"',
                'urlstm-triton[train]; extra == "all"']
    monkeypatch.setattr(extras.metadata, "requires", lambda name: declared)
    assert extras.requirements(None) == ["numpy", "torch"]
    assert extras.requirements("train") == ["bar"]
    assert extras.requirements("all") == ["bar"]
    assert extras.requirements("plots") == []


CORE_IMPORT = textwrap.dedent("""
    import importlib, sys
    blocked = set(sys.argv[1].split(","))

    class Blocked:  # what a core-only install lacks
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in blocked:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)

    sys.meta_path.insert(0, Blocked())
    for module in sys.argv[2:]:
        importlib.import_module(module)
    print("imported", len(sys.argv) - 2)
""")


def _extra_modules(*names):
    """Top-level modules of the distributions of the given extras, less those the core also needs."""
    owners = metadata.packages_distributions()
    wanted = {n.lower() for e in names for n in extras.requirements(e)} - set(extras.requirements(None))
    return sorted(m for m, dists in owners.items() if m.isidentifier() and {d.lower() for d in dists} & wanted)


def test_core_modules_import_with_only_the_core_dependencies():
    blocked = _extra_modules("train", "plots")
    assert {"accelerate", "datasets", "yaml", "tqdm", "matplotlib", "sentencepiece"} <= set(blocked)
    core = [f"urlstm_triton.{p.stem}" for p in sorted((ROOT / "urlstm_triton").glob("*.py")) if p.stem != "__init__"]
    core += [f"urlstm_triton.kernels.{p.stem}" for p in sorted((ROOT / "kernels").glob("*.py"))]
    assert {"urlstm_triton.layer", "urlstm_triton.cli", "urlstm_triton.kernels.persistent"} <= set(core)
    proc = subprocess.run([sys.executable, "-c", CORE_IMPORT, ",".join(blocked), "urlstm_triton", *core],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"imported {len(core) + 1}" in proc.stdout


SIMULATE_MISSING = textwrap.dedent("""
    import importlib.metadata as md, runpy, sys
    missing = set(sys.argv[1].split(","))
    real = md.distribution

    def distribution(name):
        if name.lower() in missing:
            raise md.PackageNotFoundError(name)
        return real(name)

    class Blocked:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in missing:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    md.distribution = distribution
    sys.meta_path.insert(0, Blocked())
    sys.argv = sys.argv[2:]
    runpy.run_path(sys.argv[0], run_name="__main__")
""")


@pytest.mark.parametrize("script", ["train/lm.py", "train/synthetic.py", "train/vision.py"])
def test_a_job_without_the_train_extra_stops_with_one_line(script, tmp_path):
    proc = subprocess.run([sys.executable, "-c", SIMULATE_MISSING, "accelerate,tqdm", str(ROOT / script),
                           "--run.dir", str(tmp_path / "run")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stdout == "", proc.stderr
    line = proc.stderr.strip()
    assert line.startswith("error: ") and "not installed: accelerate, tqdm" in line, line
    assert "pip install 'urlstm-triton[train]'" in line, line
    assert not (tmp_path / "run").exists()  # stopped before any work


def _pretend_missing(monkeypatch, *names):
    real = extras.metadata.distribution

    def distribution(name):
        if name.lower() in names:
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(extras.metadata, "distribution", distribution)


@pytest.mark.parametrize("command,argv,message", [
    (cli.compare, ["runs"], "needs urlstm-triton's train and plots extras (not installed: sentencepiece, matplotlib); "
                            "install with: pip install 'urlstm-triton[train,plots]'"),
    (cli.generate, ["--run", "x"], "needs urlstm-triton's train extra (not installed: sentencepiece)"),
    (cli.lm, ["--help"], "needs urlstm-triton's train extra (not installed: sentencepiece)"),
])
def test_tools_without_their_extras_stop_with_one_line(monkeypatch, capsys, command, argv, message):
    _pretend_missing(monkeypatch, "matplotlib", "sentencepiece")
    with pytest.raises(SystemExit) as stop:
        command(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_nothing_is_checked_outside_an_installed_distribution(monkeypatch):
    def requires(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(extras.metadata, "requires", requires)
    assert extras.requirements("train") == [] and extras.missing(["train"]) == []
    extras.require("train")  # no metadata (a source tree on sys.path): the imports decide, as without the check


def test_setup_check_names_a_dependency_that_does_not_import(monkeypatch, capsys):
    real = importlib.import_module

    def import_module(name, *a):
        if name == "tqdm":
            raise ImportError("simulated: broken tqdm")
        return real(name, *a)

    monkeypatch.setattr(extras.importlib, "import_module", import_module)
    assert extras.import_all(["train"]) == ["tqdm: import tqdm failed: ImportError: simulated: broken tqdm"]
    assert extras.main(["test"]) == 1
    assert "error: tqdm: import tqdm failed" in capsys.readouterr().err
    monkeypatch.undo()
    assert extras.main(["test"]) == 0


ENTRY_POINTS = {ep.name: ep.value for ep in metadata.distribution("urlstm-triton").entry_points
                if ep.group == "console_scripts"}


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_every_console_script_names_a_function(name):
    module, _, attr = ENTRY_POINTS[name].partition(":")
    if module == "urlstm_triton.doctor" and importlib.util.find_spec(module) is None:
        pytest.skip("urlstm_triton.doctor (issue 12) is not on this branch yet")
    assert callable(getattr(importlib.import_module(module), attr))


def test_every_job_and_tool_of_cli_has_a_console_script():
    public = {n for n, f in vars(cli).items() if callable(f) and not n.startswith("_")
              and getattr(f, "__module__", "") == cli.__name__}
    assert public == {v.partition(":")[2] for v in ENTRY_POINTS.values() if v.startswith("urlstm_triton.cli:")}


def test_a_console_script_runs_the_job():
    exe = Path(sys.executable).parent / "urlstm-synthetic"
    assert exe.exists(), "console scripts missing: reinstall (bash scripts/setup.sh)"
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "presets: copy, adding" in proc.stdout.lower()


def test_setup_stops_when_an_install_fails(tmp_path):
    """A failed pip install ends scripts/setup.sh with pip's error, not with the ready line."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parents[1])
    (tmp_path / "pyproject.toml").write_text("[project\nname = 'broken'\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1")  # nothing is fetched
    proc = subprocess.run(["bash", "scripts/setup.sh"], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "Expected ']'" in out and "ready" not in out, out
