"""The reference recurrence against independent formulas, gradcheck, and the BPTT path against autograd."""
import pytest
import torch

from formulas import run_layer, run_stack
from urlstm_triton import ALL_VARIANTS, URLSTM, parse_gate, urlstm
from urlstm_triton.reference import naive_recurrence, reference_recurrence

T, B, I, H = 5, 3, 4, 7  # odd sizes on purpose


def _rand_weights(code, in_size=I, hidden=H, dtype=torch.float64, bias=True):
    G = parse_gate(code).num_gates
    return (torch.randn(G * hidden, in_size, dtype=dtype) * 0.5,
            torch.randn(G * hidden, hidden, dtype=dtype) * 0.5,
            torch.randn(G * hidden, dtype=dtype) * 0.5 if bias else None)


@pytest.mark.parametrize("code", ALL_VARIANTS)
@pytest.mark.parametrize("impl", [naive_recurrence, reference_recurrence])
def test_recurrence_matches_step_formula(code, impl):
    spec = parse_gate(code)
    x = torch.randn(T, B, I, dtype=torch.float64)
    h0, c0 = torch.randn(B, H, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64)
    w = _rand_weights(code)
    out, h, c = impl(x, *w, h0, c0, spec)
    ref_out, ref_h, ref_c = run_layer(code, x, h0, c0, *w)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h, ref_h, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c, ref_c, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("code", ALL_VARIANTS)
def test_gradcheck_every_variant(code):
    spec = parse_gate(code)
    x = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    w = [t.requires_grad_() for t in _rand_weights(code, 3, 4)]

    def fn(x, h0, c0, w_ih, w_hh, b):
        out, h, c = reference_recurrence(x, w_ih, w_hh, b, h0, c0, spec)
        return out, h, c

    assert torch.autograd.gradcheck(fn, (x, h0, c0, *w))


@pytest.mark.parametrize("code", ["UR", "--", "OM", "lstm"])
def test_bptt_gradients_equal_autograd(code):
    """The explicit BPTT backward equals autograd through the naive loop, for every input and weight."""
    spec = parse_gate(code)
    x = torch.randn(9, 2, 5, dtype=torch.float64)
    h0, c0 = torch.randn(2, 6, dtype=torch.float64), torch.randn(2, 6, dtype=torch.float64)
    w = _rand_weights(code, 5, 6)
    grads = []
    for impl in (naive_recurrence, reference_recurrence):
        leaves = [t.clone().requires_grad_() for t in (x, h0, c0, *w)]
        out, h, c = impl(leaves[0], *leaves[3:], leaves[1], leaves[2], spec)
        torch.manual_seed(1)
        loss = (out * torch.randn_like(out)).sum() + (h * 0.3).sum() + (c * c).sum()
        grads.append(torch.autograd.grad(loss, leaves))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_float32_reference_close_to_float64():
    spec = parse_gate("UR")
    x = torch.randn(40, 4, 16, dtype=torch.float64)
    h0, c0 = torch.zeros(4, 32, dtype=torch.float64), torch.zeros(4, 32, dtype=torch.float64)
    w = _rand_weights("UR", 16, 32)
    ref = run_layer("UR", x, h0, c0, *w)[0]
    out = reference_recurrence(x.float(), *[t.float() for t in w], h0.float(), c0.float(), spec)[0]
    assert ((out.double() - ref).abs().max() / ref.abs().max()) < 1e-5


def test_bfloat16_autocast_keeps_cell_in_float32():
    """Under CPU autocast the GEMMs run in bf16 while c stays float32; error vs float64 within bf16 bounds."""
    m = URLSTM(16, 32, backend="reference").double()
    x = torch.randn(30, 4, 16, dtype=torch.float64)
    ref, _ = m(x)
    m32 = URLSTM(16, 32, backend="reference")
    m32.load_state_dict({k: v.float() for k, v in m.state_dict().items()})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, (h, c) = m32(x.float())
    assert out.dtype == torch.bfloat16
    rel = (out.double() - ref).abs().max() / ref.abs().max()
    assert rel < 2e-2
    out.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m32.parameters())


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("code", ["UR", "C-", "lstm"])
def test_multilayer_bidirectional_against_composition(code, bidirectional):
    D, L = (2 if bidirectional else 1), 3
    weights = []
    for layer in range(L):
        for _ in range(D):
            weights.append(_rand_weights(code, I if layer == 0 else H * D))
    x = torch.randn(T, B, I, dtype=torch.float64)
    h0 = torch.randn(L * D, B, H, dtype=torch.float64)
    c0 = torch.randn(L * D, B, H, dtype=torch.float64)
    out, (hn, cn) = urlstm(x, weights, (h0, c0), gate=code, bidirectional=bidirectional, backend="reference")
    ref_out, ref_h, ref_c = run_stack(code, x, h0, c0, weights, bidirectional)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(hn, ref_h, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cn, ref_c, rtol=1e-12, atol=1e-12)


def test_no_bias_and_zero_initial_state():
    w = _rand_weights("UR", bias=False)
    x = torch.randn(T, B, I, dtype=torch.float64)
    out, _ = urlstm(x, [w], gate="UR")
    zeros = torch.zeros(B, H, dtype=torch.float64)
    torch.testing.assert_close(out, run_layer("UR", x, zeros, zeros, *w)[0])


# --- the closed-form elementwise backward and the oneDNN GEMMs of reference_recurrence ---------------------

def _grads(impl, code, x, h0, c0, w, seed=1):
    """Outputs and the gradients of a loss touching out, h_T and c_T, for every input and weight."""
    spec = parse_gate(code)
    leaves = [t.clone().requires_grad_() for t in (x, h0, c0, *w) if t is not None]
    x_, h0_, c0_, w_ih, w_hh = leaves[:5]
    b = leaves[5] if len(leaves) > 5 else None
    out, h, c = impl(x_, w_ih, w_hh, b, h0_, c0_, spec)
    gen = torch.Generator().manual_seed(seed)
    loss = ((out.double() * torch.randn(out.shape, generator=gen, dtype=torch.float64)).sum()
            + (h.double() * 0.3).sum() + (c.double() ** 2).sum())
    return (out, h, c) + torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("steps,bias", [(6, True), (1, True), (4, False)])
@pytest.mark.parametrize("code", ALL_VARIANTS)
def test_fast_backward_equals_autograd_every_variant(code, steps, bias):
    """Every variant (closed-form backward for the elementwise ones, autograd per step for cumax), odd
    shapes, T=1 and no bias: outputs and all gradients equal autograd through the naive loop in float64."""
    x = torch.randn(steps, 3, 5, dtype=torch.float64)
    h0, c0 = torch.randn(3, 7, dtype=torch.float64), torch.randn(3, 7, dtype=torch.float64)
    w = _rand_weights(code, 5, 7, bias=bias)
    ref = _grads(naive_recurrence, code, x, h0, c0, w)
    got = _grads(reference_recurrence, code, x, h0, c0, w)
    assert len(got) == len(ref) == 3 + 5 + bias
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.fixture
def onednn_everywhere(monkeypatch):
    """Take the oneDNN GEMM paths even at test sizes (they are used from ONEDNN_MIN_MACS multiply-adds on)."""
    import urlstm_triton.reference as reference

    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch build has no oneDNN")
    monkeypatch.setattr(reference, "ONEDNN_MIN_MACS", 0)


@pytest.mark.parametrize("code", ["UR", "U-", "lstm", "OM"])
def test_float32_onednn_paths_match_float64_autograd(code, onednn_everywhere):
    """float32 through the oneDNN input projection, recurrent and weight-gradient GEMMs vs float64 autograd."""
    x = torch.randn(7, 5, 9, dtype=torch.float64)
    h0, c0 = torch.randn(5, 11, dtype=torch.float64), torch.randn(5, 11, dtype=torch.float64)
    w = _rand_weights(code, 9, 11)
    ref = _grads(naive_recurrence, code, x, h0, c0, w)
    got = _grads(reference_recurrence, code, x.float(), h0.float(), c0.float(), [t.float() for t in w])
    for a, b in zip(got, ref):
        assert a.dtype == torch.float32
        assert ((a.double() - b).abs().max() / b.abs().max()) < 1e-5


def test_input_projection_onednn_equals_linear(onednn_everywhere):
    """The oneDNN input projection gives F.linear's values and gradients, with or without bias or grad on x."""
    from urlstm_triton.reference import _input_projection

    for with_bias in (True, False):
        for x_grad in (True, False):
            x = torch.randn(4, 3, 6, requires_grad=x_grad)
            w = torch.randn(10, 6, requires_grad=True)
            b = torch.randn(10, requires_grad=True) if with_bias else None
            g = torch.randn(4, 3, 10)
            outs = []
            for fn in (_input_projection, torch.nn.functional.linear):
                y = fn(x, w, b)
                leaves = [t for t in (x, w, b) if t is not None and t.requires_grad]
                outs.append((y,) + torch.autograd.grad(y, leaves, g))
            assert outs[0][0].grad_fn is not None and "InputProjection" in type(outs[0][0].grad_fn).__name__
            for a, r in zip(*outs):
                torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("code", ["UR", "-R", "C-", "lstm"])
def test_bfloat16_autocast_gradients_match_naive(code):
    """Under CPU autocast (bf16 GEMMs, float32 cell) the explicit backward follows the naive loop's autograd
    to bf16 accuracy, and c_T stays float32."""
    x = torch.randn(8, 4, 6)
    h0, c0 = torch.randn(4, 16), torch.randn(4, 16)
    w = [t.float() for t in _rand_weights(code, 6, 16)]
    res = []
    for impl in (naive_recurrence, reference_recurrence):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            res.append(_grads(impl, code, x, h0, c0, w))
    assert res[1][0].dtype == torch.bfloat16 and res[1][2].dtype == torch.float32
    for a, b in zip(*res):
        assert a.dtype == b.dtype
        assert ((a.double() - b.double()).abs().max() / b.double().abs().max()) < 2e-2


@pytest.mark.parametrize("code", ["UR", "OM"])
def test_backward_twice_with_retained_graph_gives_same_gradients(code):
    """The backward must not overwrite what forward saved: a second backward over a retained graph agrees."""
    spec = parse_gate(code)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    w = [t.requires_grad_() for t in _rand_weights(code, 3, 4)]
    h0 = torch.zeros(2, 4, dtype=torch.float64)
    out, h, c = reference_recurrence(x, *w, h0, h0, spec)
    loss = out.pow(2).sum() + c.sum()
    first = torch.autograd.grad(loss, [x, *w], retain_graph=True)
    second = torch.autograd.grad(loss, [x, *w])
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("code", ALL_VARIANTS)
def test_inference_forward_equals_training_forward(code):
    """Without anything to differentiate the loop reuses one step's buffers and saves nothing: same numbers
    as the forward that saves for backward, in float64 and in float32 autocast to bf16."""
    spec = parse_gate(code)
    w = _rand_weights(code, 5, 6)
    x = torch.randn(4, 3, 5, dtype=torch.float64)
    h0, c0 = torch.randn(3, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    for autocast in (False, True):
        args = [t.float() for t in (x, *w, h0, c0)] if autocast else [x, *w, h0, c0]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            with torch.no_grad():
                inference = reference_recurrence(*args, spec)
            trained = reference_recurrence(args[0], args[1].clone().requires_grad_(), *args[2:], spec)
        assert trained[0].grad_fn is not None and inference[0].grad_fn is None
        for a, b in zip(inference, trained):
            assert a.dtype == b.dtype
            torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("code", ["UR", "lstm"])
def test_wide_steps_take_the_sigmoid_tanh_and_match_autograd(code):
    """From 4096 float32 elements per step the CPU tanh is computed as 2 sigmoid(2x) - 1 (B*H = 8*512 here):
    float32 outputs and gradients (through oneDNN) stay within float32 error of float64 autograd, and float64
    (torch's tanh) equals it."""
    x = torch.randn(3, 8, 4, dtype=torch.float64)
    h0, c0 = torch.randn(8, 512, dtype=torch.float64), torch.randn(8, 512, dtype=torch.float64) * 2
    w = _rand_weights(code, 4, 512)
    w = (w[0], w[1] * 0.1, w[2])
    ref = _grads(naive_recurrence, code, x, h0, c0, w)
    got = _grads(reference_recurrence, code, x, h0, c0, w)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    got32 = _grads(reference_recurrence, code, x.float(), h0.float(), c0.float(), [t.float() for t in w])
    for a, b in zip(got32, ref):
        assert ((a.double() - b).abs().max() / b.abs().max()) < 1e-5


@pytest.mark.parametrize("code", ["UR", "lstm", "OM"])
def test_empty_sequence_or_batch(code):
    """T=0 gives back the initial state (zero weight gradients, identity for h0 and c0); B=0 runs too."""
    spec = parse_gate(code)
    w = [t.requires_grad_() for t in _rand_weights(code, 4, 5)]
    h0 = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    out, h, c = reference_recurrence(torch.zeros(0, 3, 4, dtype=torch.float64), *w, h0, c0, spec)
    assert out.shape == (0, 3, 5)
    torch.testing.assert_close(h, h0.detach())
    torch.testing.assert_close(c, c0.detach())
    grads = torch.autograd.grad(h.sum() + c.sum(), [*w, h0, c0])
    assert all((g == 0).all() for g in grads[:3]) and all((g == 1).all() for g in grads[3:])
    empty = torch.zeros(0, 5, dtype=torch.float64)
    x = torch.randn(4, 0, 4, dtype=torch.float64, requires_grad=True)
    out, h, c = reference_recurrence(x, *w, empty, empty, spec)
    assert out.shape == (4, 0, 5) and h.shape == c.shape == (0, 5)
    grads = torch.autograd.grad(out.sum(), [x, *w])
    assert grads[0].shape == x.shape and all((g == 0).all() for g in grads[1:])
