"""A whole model holding a URLSTM, saved with ``torch.save(model)`` and loaded with PyTorch's default
``torch.load(weights_only=True)``, needs only the module classes allow-listed, as with ``nn.LSTM``: the pattern of
pytorch/examples' word_language_model (``torch.save(model, f)`` after training, ``torch.load`` in another
process), with its ``RNNModel`` below."""
import pickle
import pickletools
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from urlstm_triton import URLSTM, URLSTMCell

TESTS = Path(__file__).resolve().parent


class RNNModel(nn.Module):
    """word_language_model's model: encoder, a recurrent module, decoder, with its ``rnn_type`` switch."""

    def __init__(self, rnn_type: str, ntoken: int, ninp: int, nhid: int, nlayers: int, dropout: float = 0.5):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        if rnn_type == "URLSTM":
            self.rnn = URLSTM(ninp, nhid, nlayers, dropout=dropout, gate="C-", chrono_tmax=20.0, backend="reference")
        else:
            self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)

    def forward(self, tokens):
        out, _ = self.rnn(self.drop(self.encoder(tokens)))
        return self.decoder(self.drop(out))


LOAD = """
import sys, torch
from torch import nn
sys.path.insert(0, sys.argv[1])
from test_layer_pickle import RNNModel
from urlstm_triton import URLSTM
rnn_class = {"LSTM": nn.LSTM, "URLSTM": URLSTM}[sys.argv[3]]
with torch.serialization.safe_globals([RNNModel, nn.Dropout, nn.Embedding, nn.Linear, rnn_class]):
    model = torch.load(sys.argv[2], weights_only=True)  # PyTorch's default since 2.6, spelled out
torch.save(model(torch.arange(12).view(6, 2) % 10).detach(), sys.argv[4])
print(type(model.rnn).__name__, getattr(model.rnn, "spec", None), getattr(model.rnn, "options", None))
"""


@pytest.mark.parametrize("rnn_type", ["LSTM", "URLSTM"])
def test_a_saved_model_loads_with_weights_only_in_a_fresh_process(tmp_path, rnn_type):
    torch.manual_seed(0)
    model = RNNModel(rnn_type, ntoken=10, ninp=6, nhid=8, nlayers=2, dropout=0.2).eval()
    expected = model(torch.arange(12).view(6, 2) % 10).detach()
    torch.save(model, tmp_path / "model.pt")
    res = subprocess.run([sys.executable, "-c", LOAD, str(TESTS), str(tmp_path / "model.pt"), rnn_type,
                          str(tmp_path / "out.pt")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert torch.equal(torch.load(tmp_path / "out.pt"), expected)
    if rnn_type == "URLSTM":  # the gate and the options are the objects again, not the dicts they were pickled as
        assert ("GateSpec(primary='C', aux='-', classic=False, master_chunk=1) LayerOptions(backend='reference'"
                in res.stdout)


def _globals(obj) -> set:
    """Every class or function a pickle of ``obj`` names (protocol 2 writes them as GLOBAL opcodes)."""
    return {arg.replace(" ", ".") for op, arg, _ in pickletools.genops(pickle.dumps(obj, protocol=2))
            if op.name == "GLOBAL"}


def test_the_pickled_state_names_no_internal_class():
    layer = URLSTM(3, 4, gate="UR", chunk_size=8, dot_precision="tf32")  # options off their defaults too
    cell = URLSTMCell(3, 4, gate="lstm")
    ours = {g for g in _globals(layer) | _globals(cell) if g.startswith("urlstm_triton")}
    assert ours == {"urlstm_triton.layer.URLSTM", "urlstm_triton.layer.URLSTMCell"}
    again = pickle.loads(pickle.dumps(layer))
    assert again.spec == layer.spec and again.options == layer.options and again.gate == "UR"
    x = torch.randn(5, 2, 3)
    with warnings.catch_warnings():  # on the CPU the kernels these options tune do not run (warned once)
        warnings.simplefilter("ignore")
        assert torch.equal(again(x)[0], layer(x)[0])
    assert pickle.loads(pickle.dumps(cell)).spec.classic
