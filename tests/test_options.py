"""LayerOptions (issue 13): one typed, frozen object for the backend and the Triton backend's knobs, validated once
where it is made; unknown keywords are a TypeError naming them, as nn.LSTM does; no import cycle in the package."""
import ast
import dataclasses
from pathlib import Path

import pytest
import torch

from urlstm_triton import URLSTM, URLSTMCell, urlstm
from urlstm_triton.options import LayerOptions, make_options, parse_chunk_size

PACKAGE = Path(__file__).resolve().parents[1] / "urlstm_triton"
KERNELS_DIR = Path(__file__).resolve().parents[1] / "kernels"


@pytest.mark.parametrize("changes, exc, words", [
    ({"backend": "cuda"}, ValueError, "backend must be one of"),
    ({"kernel": "fast"}, ValueError, "kernel must be one of"),
    ({"chunk_size": 0}, ValueError, "chunk_size must be None, a positive int or 'auto'"),
    ({"chunk_size": "64"}, ValueError, "chunk_size"),
    ({"chunk_size": True}, ValueError, "chunk_size"),
    ({"memory_budget": -1}, ValueError, "memory_budget"),
    ({"dot_precision": "tf64"}, ValueError, "dot_precision"),
    ({"cuda_graph": 1}, TypeError, "cuda_graph must be True or False"),
    ({"backend": "reference", "chunk_size": 2}, TypeError, r"backend='reference' takes no backend options, got "
                                                           r"\['chunk_size'\]"),
    ({"chunk_sise": 4}, TypeError, r"unknown triton backend option\(s\) \['chunk_sise'\]"),
])
def test_bad_options_are_refused_naming_the_field(changes, exc, words):
    with pytest.raises(exc, match=words):
        make_options(**changes)


def test_options_are_frozen_and_list_only_what_differs():
    opts = LayerOptions(backend="triton", chunk_size=64, kernel="step")
    assert opts.kernel_options() == {"kernel": "step", "chunk_size": 64}
    assert LayerOptions().kernel_options() == {}
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.chunk_size = 3
    assert make_options(opts, chunk_size="auto").chunk_size == "auto" and opts.chunk_size == 64


def test_parse_chunk_size_from_text():
    assert parse_chunk_size("none") is None and parse_chunk_size(None) is None and parse_chunk_size("0") is None
    assert parse_chunk_size("auto") == "auto" and parse_chunk_size("64") == 64 and parse_chunk_size(8) == 8
    for bad in ("-3", "x", "1.5"):
        with pytest.raises(ValueError, match="chunk_size|positive integer"):
            parse_chunk_size(bad)


def test_layer_keywords_make_the_options_and_unknown_ones_are_type_errors():
    m = URLSTM(3, 4, backend="triton", kernel="step", chunk_size=64)
    assert m.options == LayerOptions(backend="triton", kernel="step", chunk_size=64) and m.backend == "triton"
    assert "chunk_size=64" in repr(m)
    with pytest.raises(TypeError, match=r"unknown URLSTM keyword argument\(s\) \['batch_frist'\] \(did you mean "
                                        r"'batch_first'\?\)"):
        URLSTM(8, 16, batch_frist=True)
    with pytest.raises(TypeError, match=r"unknown URLSTM keyword argument\(s\) \['foo'\]; the backend options"):
        URLSTM(8, 16, foo=1)
    with pytest.raises(TypeError, match="unexpected keyword argument 'batch_first'"):
        URLSTMCell(8, 16, batch_first=True)  # nn.LSTMCell has no batch_first either
    with pytest.raises(NotImplementedError, match="proj_size=4"):
        URLSTM(8, 16, proj_size=4)
    assert URLSTM(8, 16, proj_size=0).hidden_size == 16  # nn.LSTM's default means "no projection"
    with pytest.raises(TypeError, match="either options= or"):
        URLSTM(3, 4, options=LayerOptions(), chunk_size=2)
    shared = LayerOptions(backend="reference")
    assert URLSTM(3, 4, options=shared).options is shared


def test_functional_entry_point_takes_the_same_options():
    m = URLSTM(3, 4, backend="reference")
    x = torch.randn(5, 2, 3)
    expected, _ = m(x)
    out, _ = urlstm(x, m.layer_weights(), options=LayerOptions(backend="reference"))
    assert torch.equal(out, expected)
    with pytest.raises(TypeError, match=r"unknown triton backend option\(s\) \['tile'\]"):
        urlstm(x, m.layer_weights(), backend="reference", tile=16)
    with pytest.raises(TypeError, match=r"\['batch_frist'\] \(did you mean 'batch_first'\?\)"):
        urlstm(x, m.layer_weights(), batch_frist=True)
    with pytest.raises(NotImplementedError, match=r"proj_size=2: urlstm has no projection of h"):
        urlstm(x, m.layer_weights(), proj_size=2)
    assert torch.equal(urlstm(x, m.layer_weights(), backend="reference", proj_size=0)[0], expected)


def _module_name(path: Path) -> str:
    if path.is_relative_to(KERNELS_DIR):
        rel = ("urlstm_triton", "kernels") + path.relative_to(KERNELS_DIR).with_suffix("").parts
    else:
        rel = ("urlstm_triton",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(p for p in rel if p != "__init__")


def _import_nodes(tree, module_level: bool):
    """Import statements of a module: all of them, or only those that run when it is imported (not in functions)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif not (module_level and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))):
            stack.extend(ast.iter_child_nodes(node))


def _imports(path: Path, name: str, modules: set, module_level: bool = True) -> set:
    """Package modules that ``path`` imports when it is imported (or anywhere, with ``module_level=False``)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in _import_nodes(ast.parse(path.read_text()), module_level):
        if isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(max(0, node.level - 1)):
                base = base.rsplit(".", 1)[0]
            target = (base + "." + node.module if node.module else base) if node.level else node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                out.add(full if full in modules else target)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    # a module importing its own package (or a parent) is how Python loads it, not a cycle
    return {m for m in out if m in modules and not name.startswith(m + ".") and m != name}


def test_the_package_has_no_import_cycle():
    """No cycle among the imports that run at import time; and the backend never imports the functional entry
    point that dispatches to it, not even inside a function (they imported each other before)."""
    files = list(PACKAGE.rglob("*.py")) + list(KERNELS_DIR.rglob("*.py"))
    names = {_module_name(p): p for p in files}
    graph = {n: _imports(p, n, set(names)) for n, p in names.items()}
    backend = names["urlstm_triton.triton_backend"]
    assert "urlstm_triton.functional" not in _imports(backend, "urlstm_triton.triton_backend", set(names), False)
    assert _imports(names["urlstm_triton.options"], "urlstm_triton.options", set(names), False) == set()  # a leaf
    done, stack = set(), []

    def visit(node):
        if node in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(node):] + [node]))
        if node in done:
            return
        stack.append(node)
        for nxt in sorted(graph[node]):
            visit(nxt)
        stack.pop()
        done.add(node)

    for n in sorted(graph):
        visit(n)
