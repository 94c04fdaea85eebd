"""What urlstm-triton's extras hold, whether they are installed, and the one-line stop when one is missing.

The layer needs only torch, triton and numpy. The jobs, and the tools that read their runs, need the ``train``
extra (Accelerate, datasets, sentencepiece, ...), the plotting tools also ``plots``. :func:`require` checks,
before a command imports any of them, that every distribution its extras list is installed; if one is not, the
command stops with one line that says what to install (exit status 2) rather than an ImportError traceback from
deep inside a job, or half-way through a run when a lazily imported module turns out to be missing.

What an extra holds is read from the installed distribution's metadata (written from pyproject.toml, which so
stays the only list); an extra that names ``urlstm-triton[...]`` (``test``, ``all``) includes those extras. A
source tree used without installing it has no metadata: then nothing is checked. The rest of a requirement's
marker (``platform_system == 'Linux'``, ...) is evaluated with the ``packaging`` library where it is installed (the
``test`` extra has it); a core-only install, without it, takes such a requirement as applying.

``python -m urlstm_triton.extras EXTRA ...`` imports every module of every distribution that the core and those
extras require, and fails naming the ones that do not import: ``scripts/setup.sh``'s last step.
"""
from __future__ import annotations

import importlib
import importlib.metadata as metadata
import re
import sys
import warnings
from typing import Dict, List, Optional, Sequence

DISTRIBUTION = "urlstm-triton"
_REQUIREMENT = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")
_EXTRA = re.compile(r"""\bextra\s*==\s*["']([^"']+)["']""")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _holds_here(marker: str, extra: str) -> bool:
    """Whether a requirement's marker holds in this environment (for the extra the line belongs to)."""
    try:
        from packaging.markers import Marker
    except ImportError:
        return True
    return Marker(marker).evaluate({"extra": extra})


def requirements(extra: Optional[str] = None) -> List[str]:
    """Distribution names the installed urlstm-triton requires: the core ones (``extra=None``) or those of
    ``extra``, with the extras it includes. [] when urlstm-triton is not installed."""
    try:
        declared = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        return []
    names: List[str] = []
    for requirement in declared:
        spec, _, marker = requirement.partition(";")
        extras_of_line = _EXTRA.findall(marker)
        if (extra is None and extras_of_line) or (extra is not None and extra not in extras_of_line):
            continue
        if marker.strip() and not _holds_here(marker, extra or ""):
            continue
        name, included = _REQUIREMENT.match(spec).groups()
        if _canonical(name) == DISTRIBUTION:  # urlstm-triton[train,plots]: those extras' requirements
            found = [n for e in (included or "").split(",") if e.strip() for n in requirements(e.strip())]
        else:
            found = [name]
        names += [n for n in found if n not in names]
    return names


def missing(extras: Sequence[str]) -> List[str]:
    """The distributions of ``extras`` that are not installed, in the order the extras list them."""
    absent: List[str] = []
    for extra in extras:
        for name in requirements(extra):
            try:
                metadata.distribution(name)
            except metadata.PackageNotFoundError:
                if name not in absent:
                    absent.append(name)
    return absent


def require(*extras: str) -> None:
    """Stop with one line that says what to install (exit status 2) unless every distribution of ``extras`` is
    installed."""
    absent = missing(extras)
    if not absent:
        return
    which = ",".join(extras)
    print(f"error: this command needs urlstm-triton's {' and '.join(extras)} extra{'s' if len(extras) > 1 else ''} "
          f"(not installed: {', '.join(absent)}); install with: pip install '{DISTRIBUTION}[{which}]' "
          f"(in a clone: pip install -e '.[{which}]')", file=sys.stderr)
    raise SystemExit(2)


def distributions(extras: Sequence[str]) -> List[str]:
    """The distributions the core and ``extras`` require, each once."""
    return list(dict.fromkeys(requirements(None) + [n for e in extras for n in requirements(e)]))


def _modules_of() -> Dict[str, List[str]]:
    """Importable top-level modules per canonical distribution name."""
    modules: Dict[str, List[str]] = {}
    for module, dists in metadata.packages_distributions().items():
        if module.isidentifier():
            for dist in dists:
                modules.setdefault(_canonical(dist), []).append(module)
    return modules


def import_all(extras: Sequence[str]) -> List[str]:
    """Import every top-level module of every distribution the core and ``extras`` require; return one
    'distribution: problem' line per failure (a distribution that is not installed, or a module that raises)."""
    modules = _modules_of()
    problems = []
    for name in distributions(extras):
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name}: not installed")
            continue
        for module in sorted(modules.get(_canonical(name), [])):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    importlib.import_module(module)
            except Exception as err:  # noqa: BLE001 - any failure to import is what this check reports
                problems.append(f"{name}: import {module} failed: {type(err).__name__}: {err}")
    return problems


def main(argv: Optional[Sequence[str]] = None) -> int:
    extras = list(sys.argv[1:] if argv is None else argv)
    if not requirements(None):
        print(f"error: {DISTRIBUTION} is not installed in this environment ({sys.executable})", file=sys.stderr)
        return 1
    problems = import_all(extras)
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    if problems:
        return 1
    import torch

    from . import __version__

    print(f"urlstm-triton {__version__} ready (torch {torch.__version__}): the {len(distributions(extras))} "
          f"distributions of the core"
          f"{' and ' + ', '.join(extras) if extras else ''} import")
    return 0


if __name__ == "__main__":
    sys.exit(main())
