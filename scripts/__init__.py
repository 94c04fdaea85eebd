"""The tools in ``scripts/``, installed as ``urlstm_triton.scripts`` (pyproject.toml's package-dir) so that the
console scripts (``urlstm-compare``, ``urlstm-plot``, ``urlstm-generate``, ``urlstm-bench``, ...; see
``urlstm_triton/cli.py``) reach them in an installed wheel. Each still runs as ``python scripts/NAME.py``."""
