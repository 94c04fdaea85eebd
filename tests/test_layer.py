"""URLSTM / URLSTMCell as drop-ins for nn.LSTM / nn.LSTMCell: shapes, conventions, init, training."""
import math

import pytest
import torch
from torch import nn

from formulas import logit
from urlstm_triton import ALL_VARIANTS, URLSTM, URLSTMCell, parse_gate


@pytest.mark.parametrize("num_layers,bidirectional,batch_first", [(1, False, False), (2, True, True), (3, True, False)])
def test_classic_mode_identical_to_nn_lstm(num_layers, bidirectional, batch_first):
    lstm = nn.LSTM(5, 7, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first).double()
    ours = URLSTM.from_lstm(lstm, backend="reference")
    D = 2 if bidirectional else 1
    x = torch.randn(3, 6, 5, dtype=torch.float64)  # (B, T, I) if batch_first else (T, B, I)
    h0 = torch.randn(num_layers * D, x.shape[0 if batch_first else 1], 7, dtype=torch.float64)
    c0 = torch.randn_like(h0)
    for state in (None, (h0, c0)):
        ref_out, (ref_h, ref_c) = lstm(x, state)
        out, (h, c) = ours(x, state)
        torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(h, ref_h, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(c, ref_c, rtol=1e-12, atol=1e-12)
    # gradients agree too (nn.LSTM's two biases receive the same gradient as our single one)
    ref_out, _ = lstm(x, (h0, c0))
    out, _ = ours(x, (h0, c0))
    ref_out.sum().backward()
    out.sum().backward()
    torch.testing.assert_close(ours.weight_hh_l0.grad, lstm.weight_hh_l0.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours.bias_l0.grad, lstm.bias_ih_l0.grad, rtol=1e-10, atol=1e-12)


def test_unbatched_input_like_nn_lstm():
    lstm = nn.LSTM(4, 6, num_layers=2).double()
    ours = URLSTM.from_lstm(lstm)
    x = torch.randn(5, 4, dtype=torch.float64)
    h0, c0 = torch.randn(2, 6, dtype=torch.float64), torch.randn(2, 6, dtype=torch.float64)
    ref_out, (ref_h, ref_c) = lstm(x, (h0, c0))
    out, (h, c) = ours(x, (h0, c0))
    assert out.shape == (5, 6) and h.shape == (2, 6) and c.shape == (2, 6)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(c, ref_c)


def test_shapes_match_nn_lstm_conventions():
    m = URLSTM(10, 12, num_layers=2, bidirectional=True, batch_first=True)
    out, (h, c) = m(torch.randn(3, 8, 10))
    assert out.shape == (3, 8, 24) and h.shape == (4, 3, 12) and c.shape == (4, 3, 12)
    names = [n for n, _ in m.named_parameters()]
    assert names[:3] == ["weight_ih_l0", "weight_hh_l0", "bias_l0"] and "weight_ih_l1_reverse" in names
    assert m.weight_ih_l1.shape == (48, 24)
    m.flatten_parameters()  # exists for code written against nn.LSTM
    assert "gate='UR'" in repr(m)


def test_gate_blocks_and_parameter_counts():
    assert URLSTM(3, 5, gate="UR").weight_hh_l0.shape == (20, 5)
    assert URLSTM(3, 5, gate="U-").weight_hh_l0.shape == (15, 5)  # no auxiliary gate: f, u, o
    assert URLSTM(3, 5, gate="lstm").weight_hh_l0.shape == (20, 5)
    assert parse_gate("UR-LSTM").code == "UR" and parse_gate("u").code == "U-" and parse_gate("R").code == "-R"
    assert parse_gate("ON-LSTM".replace("N", "M")).code == "OM"
    assert parse_gate("UR").paper_name == "UR-LSTM" and parse_gate("--").paper_name == "--LSTM"


def test_uniform_gate_initialisation():
    H = 64
    m = URLSTM(3, H, gate="UR")
    b_f, b_r = m.bias_l0[:H], m.bias_l0[H:2 * H]
    torch.testing.assert_close(b_r, -b_f)
    p = torch.sigmoid(b_f)
    assert p.min() >= 1 / H - 1e-6 and p.max() <= 1 - 1 / H + 1e-6
    assert p.max() - p.min() > 0.5  # spread over the range, not a constant
    assert abs(b_f.max().item()) <= abs(logit(1 - 1 / H)) + 1e-5


def test_chrono_standard_and_ordered_initialisation():
    H, tmax = 32, 100
    b_f = URLSTM(3, H, gate="C-", chrono_tmax=tmax).bias_l0[:H]
    assert b_f.exp().min() >= 1 - 1e-6 and b_f.exp().max() <= tmax - 1 + 1e-4
    assert torch.all(URLSTM(3, H, gate="--").bias_l0[:H] == 1.0)
    assert torch.all(URLSTM(3, H, gate="--", forget_bias=2.5).bias_l0[:H] == 2.5)
    assert torch.all(URLSTM(3, H, gate="lstm", forget_bias=1.0).bias_l0[H:2 * H] == 1.0)
    assert torch.all(URLSTM(3, H, gate="OM").bias_l0[: 2 * H] == 0.0)
    w = URLSTM(3, H).weight_hh_l0
    assert w.abs().max() <= 1 / math.sqrt(H)


def test_cell_matches_one_layer_step():
    torch.manual_seed(3)
    layer = URLSTM(4, 6, gate="UR").double()
    cell = URLSTMCell(4, 6, gate="UR").double()
    cell.load_state_dict({"weight_ih": layer.weight_ih_l0, "weight_hh": layer.weight_hh_l0, "bias": layer.bias_l0})
    x = torch.randn(5, 2, 4, dtype=torch.float64)
    out, (h, c) = layer(x)
    hc = None
    for t in range(5):
        hc = cell(x[t], hc)
        torch.testing.assert_close(hc[0], out[t])
    torch.testing.assert_close(hc[1], c[0])
    h1, c1 = cell(x[0, 0])  # unbatched
    assert h1.shape == (6,)
    torch.testing.assert_close(h1, out[0, 0])


def test_dropout_train_vs_eval():
    m = URLSTM(4, 8, num_layers=3, dropout=0.5)
    x = torch.randn(6, 2, 4)
    m.eval()
    a, _ = m(x)
    b, _ = m(x)
    torch.testing.assert_close(a, b)
    no_drop = URLSTM(4, 8, num_layers=3)
    no_drop.load_state_dict(m.state_dict())
    torch.testing.assert_close(a, no_drop.eval()(x)[0])
    m.train()
    c, _ = m(x)
    d, _ = m(x)
    assert not torch.allclose(c, d) and not torch.allclose(c, a)
    with pytest.warns(UserWarning, match="dropout"):
        URLSTM(4, 8, num_layers=1, dropout=0.3)


@pytest.mark.parametrize("code", ALL_VARIANTS)
def test_every_variant_trains_from_one_flag(code):
    """A few Adam steps on a tiny regression lower the loss for every variant."""
    torch.manual_seed(0)
    kw = {"chrono_tmax": 20} if code.startswith("C") else {}
    model = nn.ModuleDict({"rnn": URLSTM(3, 16, gate=code, **kw), "head": nn.Linear(16, 1)})
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn(12, 8, 3)
    y = x[:4].sum(dim=(0, 2)).unsqueeze(-1) * 0.3  # depends on early steps

    def loss_fn():
        out, _ = model["rnn"](x)
        return nn.functional.mse_loss(model["head"](out[-1]), y)

    first = loss_fn().item()
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    assert loss_fn().item() < 0.7 * first


def test_drop_in_replacement_in_existing_code():
    class Tagger(nn.Module):
        def __init__(self, rnn_cls):
            super().__init__()
            self.rnn = rnn_cls(8, 16, num_layers=2, batch_first=True, bidirectional=True)
            self.out = nn.Linear(32, 3)

        def forward(self, x, state=None):
            y, state = self.rnn(x, state)
            return self.out(y), state

    for cls in (nn.LSTM, URLSTM):
        model = Tagger(cls)
        y, (h, c) = model(torch.randn(4, 9, 8))
        y2, _ = model(torch.randn(4, 9, 8), (h.detach(), c.detach()))  # carried state, as in TBPTT
        assert y.shape == y2.shape == (4, 9, 3)
