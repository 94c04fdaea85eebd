"""Chunked recurrence (kernel chunks of K steps): parity with the save-everything path and memory accounting.

Runs in Triton's interpreter without a GPU (conftest), so sizes are tiny.
"""
import math

import pytest
import torch

from urlstm_triton import URLSTM
from urlstm_triton.chunking import (auto_chunk_size, chunked_boundary_bytes, chunked_working_bytes,
                                    full_activation_bytes, resolve_chunk_size)
from urlstm_triton.gates import parse_gate
from urlstm_triton.reference import naive_recurrence
from urlstm_triton.triton_backend import triton_recurrence


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def run(spec, ps, grads_out, **opts):
    leaves = [p.clone().requires_grad_() for p in ps]
    fn = naive_recurrence if opts.pop("oracle", False) else (lambda *a: triton_recurrence(*a, **opts))
    outs = fn(*leaves, spec)
    grads = torch.autograd.grad(outs, leaves, [g.to(o.dtype) for g, o in zip(grads_out, outs)])
    return list(outs) + list(grads)


def problem(spec, T, B, I, H, dtype=torch.float32):
    G = spec.num_gates
    shapes = [(T, B, I), (G * H, I), (G * H, H), (G * H,), (B, H), (B, H)]
    return [(torch.randn(*s) * 0.6).to(dtype) for s in shapes]


@pytest.mark.parametrize("code,T,K", [("UR", 7, 3), ("UR", 5, 1), ("UR", 4, 4), ("UR", 3, 10), ("U-", 7, 2),
                                      ("lstm", 6, 4)])
def test_chunked_matches_unchunked_and_oracle(code, T, K):
    """Ragged last chunk (7 = 3+3+1), K=1, K=T, K>T: outputs, final states and all six gradients."""
    spec = parse_gate(code)
    B, I, H = 2, 3, 5
    ps = problem(spec, T, B, I, H)
    probe = [torch.randn(T, B, H), torch.randn(B, H), torch.randn(B, H)]
    full = run(spec, ps, probe)
    chunked = run(spec, ps, probe, chunk_size=K)
    oracle = run(spec, [p.double() for p in ps], [g.double() for g in probe], oracle=True)
    names = ("out", "h_T", "c_T", "dx", "dw_ih", "dw_hh", "dbias", "dh0", "dc0")
    for name, a, b, o in zip(names, chunked, full, oracle):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        assert rel(a, b) < 1e-6, (name, rel(a, b))   # same kernels; only the GEMM split differs
        assert rel(a, o) < 2e-5, (name, rel(a, o))


def test_chunked_fp16_matches_oracle():
    spec = parse_gate("UR")
    ps = problem(spec, 5, 2, 3, 6, torch.float16)
    probe = [torch.randn(5, 2, 6), torch.randn(2, 6), torch.randn(2, 6)]
    chunked = run(spec, ps, probe, chunk_size=2)
    oracle = run(spec, [p.double() for p in ps], [g.double() for g in probe], oracle=True)
    for a, o in zip(chunked, oracle):
        assert rel(a, o) < 6e-3


def test_layer_chunk_option_multilayer_bidirectional():
    torch.manual_seed(3)
    kw = dict(num_layers=2, bidirectional=True, batch_first=True)
    full = URLSTM(3, 5, backend="triton", **kw)
    chunked = URLSTM(3, 5, backend="triton", chunk_size=2, **kw)
    chunked.load_state_dict(full.state_dict())
    x = torch.randn(2, 5, 3)
    res = []
    for m in (full, chunked):
        out, (hn, cn) = m(x)
        loss = (out ** 2).sum() + hn.sum() - cn.sum()
        res.append([out, hn, cn] + list(torch.autograd.grad(loss, list(m.parameters()))))
    for a, b in zip(*res):
        assert rel(b, a) < 1e-6


def saved_bytes(fn):
    """Bytes of the distinct storages autograd saves while ``fn`` runs (measured with saved-tensor hooks)."""
    storages = {}

    def pack(t):
        st = t.untyped_storage()
        storages[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(storages.values()), out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("T,K", [(12, 4), (13, 4), (12, 1), (12, 12)])
def test_saved_tensors_match_the_formula(T, K, dtype):
    """Chunked: the input, the weights and ceil(T/K) boundary states (h in the compute dtype, c in fp32);
    save-everything: the input, the weights, and per step the gates (compute dtype), c (fp32) and h; with
    gate_storage="fp32" the gates in fp32."""
    spec = parse_gate("UR")
    B, I, H, G = 3, 4, 5, 4
    ps = [p.requires_grad_() for p in problem(spec, T, B, I, H, dtype)]
    es = torch.empty((), dtype=dtype).element_size()
    inputs_and_weights = (T * B * I + G * H * I + G * H * H + G * H) * es
    got, _ = saved_bytes(lambda: triton_recurrence(*ps, spec, chunk_size=K))
    boundary = math.ceil(T / K) * B * H * (es + 4)
    assert boundary == chunked_boundary_bytes(T, B, H, K, dtype)
    assert got == inputs_and_weights + boundary
    got_full, _ = saved_bytes(lambda: triton_recurrence(*ps, spec))
    # F.linear saves x and w_ih (no bias); the Function saves gates, cs, hs and w_hh
    per_step = T * B * G * H * es + (T + 1) * B * H * (4 + es)
    assert got_full == (T * B * I + G * H * I + G * H * H) * es + per_step
    assert per_step == full_activation_bytes(T, B, H, G, dtype) - T * B * G * H * es  # minus backward's dz
    got_fp32, _ = saved_bytes(lambda: triton_recurrence(*ps, spec, gate_storage="fp32"))
    assert got_fp32 == got_full + T * B * G * H * (4 - es)
    assert full_activation_bytes(T, B, H, G, dtype, torch.float32) == full_activation_bytes(T, B, H, G, dtype) + \
        T * B * G * H * (4 - es)


def test_auto_chunk_size_from_budget():
    T, B, I, H, G, dt = 1000, 4, 8, 16, 4, torch.float32
    full = full_activation_bytes(T, B, H, G, dt)
    assert auto_chunk_size(T, B, I, H, G, dt, budget=full) is None
    budget = full // 10

    def need(k):
        return chunked_boundary_bytes(T, B, H, k, dt) + chunked_working_bytes(B, I, H, G, k, dt)

    k = auto_chunk_size(T, B, I, H, G, dt, budget=budget)
    assert k is not None and need(k) <= budget < need(2 * k)
    assert auto_chunk_size(T, B, I, H, G, dt, budget=1) == min(
        (2 ** p for p in range(11)), key=lambda k: need(min(k, T)))
    cpu = torch.device("cpu")
    assert resolve_chunk_size("auto", T, B, I, H, G, dt, cpu, memory_budget=budget) == k
    assert resolve_chunk_size(None, T, B, I, H, G, dt, cpu) is None
    for bad in (0, -3, 2.5, "big", True):
        with pytest.raises(ValueError, match="chunk_size"):
            resolve_chunk_size(bad, T, B, I, H, G, dt, cpu)
    with pytest.raises(ValueError, match="memory_budget"):
        resolve_chunk_size("auto", T, B, I, H, G, dt, cpu, memory_budget=-1)


def test_auto_chunk_through_the_layer_matches():
    torch.manual_seed(4)
    m = URLSTM(2, 4, backend="triton")
    m_auto = URLSTM(2, 4, backend="triton", chunk_size="auto", memory_budget=1500)  # forces chunks here
    m_auto.load_state_dict(m.state_dict())
    x = torch.randn(9, 2, 2)
    assert resolve_chunk_size("auto", 9, 2, 2, 4, 4, torch.float32, x.device, 1500) not in (None, 9)
    a, b = m(x)[0], m_auto(x)[0]
    ga = torch.autograd.grad(a.sum(), list(m.parameters()))
    gb = torch.autograd.grad(b.sum(), list(m_auto.parameters()))
    assert rel(b, a) < 1e-6
    for p, q in zip(ga, gb):
        assert rel(q, p) < 1e-6


def test_carried_state_composes_with_chunks():
    """TBPTT: two windows with a detached carried state equal the same windows run unchunked."""
    torch.manual_seed(5)
    m = URLSTM(2, 4, backend="triton")
    m_c = URLSTM(2, 4, backend="triton", chunk_size=3)
    m_c.load_state_dict(m.state_dict())
    x = torch.randn(10, 2, 2)
    outs = []
    for mod in (m, m_c):
        state, out = None, []
        for w in (x[:5], x[5:]):
            o, state = mod(w, state)
            state = tuple(s.detach() for s in state)
            out.append(o)
        outs.append(torch.cat(out))
    assert rel(outs[1], outs[0]) < 1e-6
