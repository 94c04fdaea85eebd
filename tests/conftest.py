import os
import pathlib

import pytest
import torch

# Without a GPU, Triton kernels run in the interpreter (numpy, one program after another). The variable is
# read when kernels are decorated, so it must be set before any kernel module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = ROOT / "data"  # small real data sets shipped with the repository (data/README.md)

# Two cores: keep torch from oversubscribing when pytest runs beside other work.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True, scope="session")
def _selfcheck_cache(tmp_path_factory):
    """The persistent kernels' self-check verdicts (urlstm_triton.selfcheck) go to a test directory, never to
    the user's cache."""
    old = os.environ.get("URLSTM_CACHE_DIR")
    os.environ["URLSTM_CACHE_DIR"] = str(tmp_path_factory.mktemp("urlstm-cache"))
    yield
    if old is None:
        os.environ.pop("URLSTM_CACHE_DIR", None)
    else:
        os.environ["URLSTM_CACHE_DIR"] = old


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture()
def corpus(tmp_path):
    """A generated train/valid/test corpus of .txt files for the LM trainer's tests (lm_helpers.make_corpus)."""
    from lm_helpers import make_corpus

    return make_corpus(tmp_path / "text")
