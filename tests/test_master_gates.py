"""Master-gate variants follow ON-LSTM's forget path (cumax only in the master gates, chunk factor C); every
variant's formula is in docs/variants.md; bias=False says which initialisation it drops."""
import warnings

import pytest
import torch

from conftest import ROOT
from formulas import run_layer, sig
from urlstm_triton import ALL_VARIANTS, URLSTM, URLSTMCell, parse_gate
from urlstm_triton.gates import master_gates
from urlstm_triton.reference import cell_update, naive_recurrence, reference_recurrence
from urlstm_triton.tasks.config import SYNTHETIC_PRESETS, SyntheticJobConfig
from urlstm_triton.tasks.synthetic_job import build_model, build_task
from urlstm_triton.training import ConfigError, parse_config

MASTER = ("-M", "CM", "UM", "OM")


def _weights(spec, in_size, hidden, scale=0.5):
    rows = spec.gate_rows(hidden)
    return (torch.randn(rows, in_size, dtype=torch.float64) * scale,
            torch.randn(rows, hidden, dtype=torch.float64) * scale,
            torch.randn(rows, dtype=torch.float64) * scale)


@pytest.mark.parametrize("code", MASTER)
@pytest.mark.parametrize("chunk", [1, 3])
@pytest.mark.parametrize("impl", [naive_recurrence, reference_recurrence])
def test_master_variants_match_on_lstm_formula(code, chunk, impl):
    spec = parse_gate(code).with_master_chunk(chunk)
    T, B, I, H = 4, 3, 5, 6
    x = torch.randn(T, B, I, dtype=torch.float64)
    h0, c0 = torch.randn(B, H, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64)
    w = _weights(spec, I, H)
    assert w[0].shape[0] == 3 * H + 2 * H // chunk
    out, h, c = impl(x, *w, h0, c0, spec)
    ref_out, ref_h, ref_c = run_layer(code, x, h0, c0, *w, master_chunk=chunk)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c, ref_c, rtol=1e-12, atol=1e-12)


def test_chunked_master_gradients_match_autograd():
    spec = parse_gate("OM").with_master_chunk(2)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    w = [t.requires_grad_() for t in _weights(spec, 3, 4)]
    torch.autograd.gradcheck(lambda *a: reference_recurrence(*a, spec), (x, *w, h0, c0))
    outs = [f(x, *w, h0, c0, spec) for f in (naive_recurrence, reference_recurrence)]
    grads = [torch.autograd.grad(sum(t.sum() for t in o), [x, *w, h0, c0]) for o in outs]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_forget_gate_stays_sigmoid_and_cumax_is_only_in_master_gates():
    """With the master forget gate saturated open (mf = 1) and the master input gate closed (mi = 1) on all
    but the last master unit, ON-LSTM's effective gate is the plain sigmoid f there, for every primary init, O
    included (O- alone puts cumax on f); on the last chunk mi = 0, so g = mf = 1."""
    H, C = 6, 2
    spec = parse_gate("OM").with_master_chunk(C)
    z_f = torch.randn(1, H, dtype=torch.float64)
    first = torch.full((1, H // C), -50.0, dtype=torch.float64)
    first[0, 0] = 50.0  # softmax mass on the first unit: cumax = 1 everywhere
    last = torch.full((1, H // C), -50.0, dtype=torch.float64)
    last[0, -1] = 50.0  # mass on the last unit: cumax = (0, .., 0, 1), mi = (1, .., 1, 0)
    z = torch.cat([z_f, first, last, torch.zeros(1, 2 * H, dtype=torch.float64)], -1)
    c_prev = torch.ones(1, H, dtype=torch.float64)
    _, c = cell_update(z, c_prev, spec)  # u = tanh(0) = 0, so c = g * c_prev = g
    torch.testing.assert_close(c[:, :-C], sig(z_f)[:, :-C], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c[:, -C:], torch.ones(1, C, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    # O- (no master gate): cumax on the forget gate itself, a monotone ramp over the units
    _, c_o = cell_update(torch.cat([z_f, torch.zeros(1, 2 * H, dtype=torch.float64)], -1), c_prev, parse_gate("O-"))
    assert torch.all(c_o[0, 1:] >= c_o[0, :-1]) and abs(float(c_o[0, -1]) - 1.0) < 1e-12


def test_master_gates_are_monotone_and_constant_within_a_chunk():
    mf, mi = master_gates(torch.randn(3, 4), torch.randn(3, 4), 3)
    assert mf.shape == mi.shape == (3, 12)
    for m, sign in ((mf, 1), (mi, -1)):
        assert torch.all(sign * (m[:, 1:] - m[:, :-1]) >= -1e-7)
        chunks = m.view(3, 4, 3)
        assert torch.equal(chunks, chunks[:, :, :1].expand(-1, -1, 3))
    torch.testing.assert_close(mf[:, -1], torch.ones(3))  # cumax ends at 1
    torch.testing.assert_close(mi[:, -1], torch.zeros(3), atol=1e-6, rtol=0)  # 1 - cumax ends at 0


def test_master_chunk_option_on_layer_cell_and_job():
    m = URLSTM(3, 8, gate="OM", master_chunk=4)
    assert m.weight_ih_l0.shape == (3 * 8 + 2 * 2, 3) and "master_chunk=4" in repr(m)
    assert torch.all(m.bias_l0[:8 + 4] == 0.0)  # f and both master gates start at 0
    cell = URLSTMCell(3, 8, gate="UM", master_chunk=4)
    cell.load_state_dict({k.replace("_l0", ""): v for k, v in URLSTM(3, 8, gate="UM", master_chunk=4)
                          .state_dict().items()})
    h, c = cell(torch.randn(2, 3))
    assert h.shape == (2, 8)
    with pytest.raises(ValueError, match="master_chunk=2 applies only to the master-gate variants"):
        URLSTM(3, 8, gate="UR", master_chunk=2)
    with pytest.raises(ValueError, match="hidden_size 8 is not a multiple of master_chunk 3"):
        URLSTM(3, 8, gate="OM", master_chunk=3)
    with pytest.raises(ValueError, match="master_chunk must be a positive integer"):
        URLSTM(3, 8, gate="OM", master_chunk=0)

    cfg = parse_config(SyntheticJobConfig, ["--preset", "copy-tiny", "--variant=OM", "--model.master_chunk", "8",
                                            "--lag", "3"], presets=SYNTHETIC_PRESETS)
    model = build_model(cfg, build_task(cfg))
    assert model.rnn.spec.master_chunk == 8 and model.rnn.weight_hh_l0.shape == (3 * 128 + 2 * 16, 128)
    for bad, msg in ((["--variant=UR", "--model.master_chunk", "2"], "only to the master-gate variants"),
                     (["--variant=OM", "--model.master_chunk", "3"], "not a multiple of master_chunk 3")):
        with pytest.raises(ConfigError, match=msg):
            parse_config(SyntheticJobConfig, bad)


@pytest.mark.parametrize("code,dropped", [
    ("UR", ["uniform gate initialisation (UGI)", "refine-gate bias"]),
    ("U-", ["uniform gate initialisation (UGI)"]),
    ("C-", ["chrono forget-gate bias"]),
    ("--", ["standard forget-gate bias 1"]),
    ("-R", ["standard forget-gate bias 1", "refine-gate bias"]),
    ("UM", ["uniform gate initialisation (UGI)"]),
])
def test_bias_false_names_the_initialisation_it_drops(code, dropped):
    kwargs = {"chrono_tmax": 50.0} if code.startswith("C") else {}
    with pytest.warns(UserWarning, match="bias=False") as rec:
        URLSTM(3, 4, gate=code, bias=False, **kwargs)
    text = " ".join(str(w.message) for w in rec)
    for name in dropped:
        assert name in text
    assert ("refine-gate bias" in text) == any("refine" in d for d in dropped)


@pytest.mark.parametrize("code,kwargs", [("OM", {}), ("O-", {}), ("--", {"forget_bias": 0.0}), ("lstm", {})])
def test_bias_false_is_silent_when_nothing_is_dropped(code, kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        URLSTM(3, 4, gate=code, bias=False, **kwargs)
    with pytest.warns(UserWarning, match="forget-gate bias 2"):
        URLSTM(3, 4, gate="lstm", bias=False, forget_bias=2.0)


def test_every_variant_has_its_formula_in_docs():
    text = (ROOT / "docs" / "variants.md").read_text()
    for code in ALL_VARIANTS:
        assert f"| `{code}` |" in text, f"docs/variants.md has no row for {code}"
