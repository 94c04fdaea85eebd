"""One home for errors and for file helpers (issue 13): every exception class of the package is defined in
urlstm_triton/errors.py, and the crash-safe writers in urlstm_triton/files.py behave as they say."""
import ast
import json
import pathlib

import pytest

from urlstm_triton import errors
from urlstm_triton.files import atomic_write, write_json_atomic

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("urlstm_triton", "kernels", "scripts", "train") for p in sorted((ROOT / d).rglob("*.py"))]


def _is_exception(node: ast.ClassDef, known) -> bool:
    names = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
    return any(n.endswith(("Error", "Exception", "Interrupt")) or n in known for n in names)


def test_every_exception_class_is_defined_in_errors_py():
    known = {name for name, obj in vars(errors).items() if isinstance(obj, type) and issubclass(obj, BaseException)}
    assert {"ConfigError", "DataError", "StorageError", "SummaryError", "SweepError", "GateAnalysisError"} <= known
    elsewhere = [f"{p.relative_to(ROOT)}: {node.name}" for p in SOURCES if p.name != "errors.py"
                 for node in ast.walk(ast.parse(p.read_text())) if isinstance(node, ast.ClassDef)
                 and _is_exception(node, known)]
    assert elsewhere == []


def test_the_task_modules_raise_the_shared_classes_under_their_old_names():
    from urlstm_triton.tasks import compare, gate_analysis, sweep, vision

    assert compare.SummaryError is errors.SummaryError and sweep.SweepError is errors.SweepError
    assert gate_analysis.GateAnalysisError is errors.GateAnalysisError
    assert vision.DataError is errors.DataError  # one DataError: the trainers' exit status 2 covers the tasks' data
    assert issubclass(vision.DataFileNotFound, FileNotFoundError)


def test_atomic_writes_replace_whole_files_and_leave_nothing_behind(tmp_path, monkeypatch):
    path = tmp_path / "a.json"
    write_json_atomic({"loss": float("nan"), "step": 3}, path)
    assert json.loads(path.read_text()) == {"loss": None, "step": 3}  # strict JSON: NaN as null
    with pytest.raises(FileNotFoundError):  # no parents made unless asked
        atomic_write(tmp_path / "missing" / "b.txt", "x")
    atomic_write(tmp_path / "made" / "b.txt", "x", make_parents=True)
    assert (tmp_path / "made" / "b.txt").read_text() == "x"

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_json_atomic({"step": 4}, path)
    assert json.loads(path.read_text())["step"] == 3  # the old file is whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "made"]  # no temporary file left
