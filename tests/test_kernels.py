"""Triton kernels vs a float64 oracle: outputs, final states and every gradient, per gate block.

Without a GPU the kernels run in Triton's interpreter (conftest sets TRITON_INTERPRET=1), so sizes are tiny.
Errors are ``||ours - ref|| / ||ref||`` against ``naive_recurrence`` in float64 (autograd, no hand-written
derivative). Gradients of the fused weights and the bias are checked per gate block, so that a wrong
derivative of a single gate (a sign error in dz_r, say: an O(1) error in that block) cannot hide among
the other blocks' correct values. fp32 lands near 3e-7 here; the bound of 2e-5 leaves room for other
BLAS orders and still sits five orders of magnitude under what a wrong derivative produces.
bf16 runs only on a GPU (the interpreter's bf16 tl.dot is wrong).
"""
import pytest
import torch

from urlstm_triton import URLSTM, urlstm
from urlstm_triton.functional import resolve_backend
from urlstm_triton.gates import parse_gate
from urlstm_triton.reference import cell_update, naive_recurrence, reference_recurrence
from urlstm_triton.triton_backend import is_available, triton_recurrence

TOL = {torch.float32: 2e-5, torch.float16: 6e-3, torch.bfloat16: 2e-2}
NAMES = ("out", "h_T", "c_T", "dx", "dw_ih", "dw_hh", "dbias", "dh0", "dc0")


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def make_problem(spec, T, B, I, H, dtype, with_state=True, device="cpu", scale=0.6, conditioned=False):
    """float64 leaves rounded to ``dtype`` (so the oracle sees exactly the kernel's inputs). ``conditioned``:
    the weights at the layer's own scale (std ``1/sqrt(fan_in)``) instead of ``scale``. Wider layers need it:
    with O(1) weights the recurrence is chaotic, and even PyTorch's own loop in fp32 then lands O(1) away from
    float64 after a few dozen steps (``test_gpu_problems_are_well_conditioned``), which says nothing about a
    kernel."""
    G = spec.num_gates

    def leaf(*shape, s=scale):
        return (torch.randn(*shape, dtype=torch.float64, device=device) * s).to(dtype).double()

    w_ih, w_hh = (leaf(G * H, I, s=I ** -0.5), leaf(G * H, H, s=H ** -0.5)) if conditioned else \
        (leaf(G * H, I), leaf(G * H, H))
    ps = [leaf(T, B, I), w_ih, w_hh, leaf(G * H)]
    ps += [leaf(B, H), leaf(B, H)] if with_state else [torch.zeros(B, H, dtype=torch.float64, device=device)] * 2
    return ps


def errors(spec, ps, dtype, **opts):
    """Relative errors of the Triton recurrence in ``dtype`` vs the float64 oracle, keyed by NAMES (and
    per gate block for the fused weights and bias)."""
    ref_in = [p.clone().requires_grad_() for p in ps]
    ref = naive_recurrence(*ref_in, spec)
    grads_out = [torch.randn_like(r) for r in ref]
    ref_g = torch.autograd.grad(ref, ref_in, grads_out)
    our_in = [p.to(dtype).requires_grad_() for p in ps]
    ours = triton_recurrence(*our_in, spec, **opts)
    assert ours[0].dtype == dtype and ours[1].dtype == dtype
    assert ours[2].dtype == (torch.float32 if dtype != torch.float32 else dtype)
    our_g = torch.autograd.grad(ours, our_in, [g.to(o.dtype) for g, o in zip(grads_out, ours)])
    for g, p in zip(our_g, our_in):
        assert g.dtype == p.dtype
    errs = {}
    for name, a, b in zip(NAMES, list(ours) + list(our_g), list(ref) + list(ref_g)):
        assert torch.isfinite(a).all(), name
        errs[name] = rel(a, b)
    H = ps[2].shape[1]
    for name, a, b in (("dw_ih", our_g[1], ref_g[1]), ("dw_hh", our_g[2], ref_g[2]), ("dbias", our_g[3], ref_g[3])):
        for q, block in enumerate(spec.block_names()):
            errs[f"{name}[{block}]"] = rel(a[q * H:(q + 1) * H], b[q * H:(q + 1) * H])
    return errs


def assert_close(errs, tol):
    bad = {k: f"{v:.2e}" for k, v in errs.items() if not v < tol}
    assert not bad, f"relative error above {tol:g}: {bad}"


@pytest.mark.parametrize("code", ["UR", "U-", "-R", "--", "CR", "lstm"])
def test_every_mode_fp32_matches_float64(code):
    spec = parse_gate(code)
    assert_close(errors(spec, make_problem(spec, 4, 3, 5, 7, torch.float32), torch.float32), TOL[torch.float32])


@pytest.mark.parametrize(
    "T,B,I,H,with_state",
    [
        (1, 1, 3, 12, True),    # one step, one row, H not a power of two
        (3, 1, 2, 16, False),   # B=1, exact tile, zero initial state
        (2, 17, 4, 20, True),   # B and H both cross a 16-wide tile (masked second tile)
        (3, 2, 9, 5, False),    # I > H, H < one tile
    ],
)
def test_odd_shapes_fp32(T, B, I, H, with_state):
    spec = parse_gate("UR")
    errs = errors(spec, make_problem(spec, T, B, I, H, torch.float32, with_state), torch.float32)
    assert_close(errs, TOL[torch.float32])


@pytest.mark.parametrize("code", ["UR", "U-", "lstm"])
def test_fp16_matches_float64(code):
    spec = parse_gate(code)
    assert_close(errors(spec, make_problem(spec, 4, 3, 6, 12, torch.float16), torch.float16), TOL[torch.float16])


def _oracle_grads(spec, ps, flip_block=None):
    """float64 autograd gradients of sum(out * w) for (x, w_ih, w_hh, bias, h0, c0); with ``flip_block``,
    the gradient of that gate block's pre-activation is negated at every step (a sign error in one gate
    derivative, as a buggy kernel epilogue would make it)."""
    leaves = [p.clone().requires_grad_() for p in ps]
    x, w_ih, w_hh, b, h, c = leaves
    H = w_hh.shape[1]
    xproj = torch.nn.functional.linear(x, w_ih, b)
    outs = []
    for t in range(x.shape[0]):
        z = xproj[t] + h @ w_hh.t()
        if flip_block is not None:
            q = flip_block
            z.register_hook(lambda g, q=q: torch.cat([g[..., :q * H], -g[..., q * H:(q + 1) * H],
                                                      g[..., (q + 1) * H:]], -1))
        h, c = cell_update(z, c, spec)
        outs.append(h)
    weights = torch.linspace(-1, 1, x.shape[0] * x.shape[1] * H, dtype=torch.float64).view(x.shape[0], x.shape[1], H)
    return torch.autograd.grad((torch.stack(outs) * weights).sum(), leaves)


@pytest.mark.parametrize("block", [0, 1, 2, 3])
def test_tolerance_catches_a_sign_error_in_one_gate_derivative(block):
    """The check itself must be able to fail: a sign error in any single gate's derivative moves the
    gradients far beyond the fp32 tolerance, in the per-block view."""
    spec = parse_gate("UR")
    H = 6
    ps = make_problem(spec, 3, 2, 4, H, torch.float64)
    right = _oracle_grads(spec, ps)
    wrong = _oracle_grads(spec, ps, flip_block=block)
    errs = {f"{n}[{q}]": rel(w[q * H:(q + 1) * H], r[q * H:(q + 1) * H])
            for n, w, r in (("dw_ih", wrong[1], right[1]), ("dbias", wrong[3], right[3])) for q in range(4)}
    assert max(errs.values()) > 100 * TOL[torch.float32]
    with pytest.raises(AssertionError, match="relative error above"):
        assert_close(errs, TOL[torch.float32])


@pytest.mark.parametrize("bidirectional,batch_first,with_state", [(True, True, True), (False, False, False)])
def test_layer_triton_matches_reference_multilayer(bidirectional, batch_first, with_state):
    """URLSTM(backend="triton") runs every layer and direction through the kernels: same outputs, states
    and parameter gradients as the reference backend (both fp32, so they agree to rounding)."""
    torch.manual_seed(1)
    kw = dict(num_layers=2, bidirectional=bidirectional, batch_first=batch_first)
    ref = URLSTM(3, 6, backend="reference", **kw)
    tri = URLSTM(3, 6, backend="triton", **kw)
    tri.load_state_dict(ref.state_dict())
    D = 2 if bidirectional else 1
    x = torch.randn(2, 3, 3) if batch_first else torch.randn(3, 2, 3)
    state = (torch.randn(2 * D, 2, 6), torch.randn(2 * D, 2, 6)) if with_state else None
    results = []
    for m in (ref, tri):
        xi = x.clone().requires_grad_()
        st = tuple(s.clone().requires_grad_() for s in state) if state else None
        out, (hn, cn) = m(xi, st)
        loss = (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum() + hn.sum() * 0.5 - cn.sum() * 0.25
        grads = torch.autograd.grad(loss, [xi] + list(st or []) + list(m.parameters()))
        results.append([out, hn, cn] + list(grads))
    assert len(results[1]) == 3 + 1 + (2 if state else 0) + 3 * 2 * D
    for a, b in zip(*results):
        assert rel(b, a) < 1e-5


def test_autocast_runs_half_precision_inside():
    """Under torch.autocast the backend computes in the autocast dtype (fp16 here; bf16 on a GPU), returns
    half-precision outputs and fp32 parameter gradients, close to the float64 oracle."""
    spec = parse_gate("UR")
    torch.manual_seed(2)
    m = URLSTM(4, 8, backend="triton")
    x = torch.randn(3, 2, 4)
    with torch.autocast("cpu", dtype=torch.float16):
        out, (hn, cn) = m(x)
    assert out.dtype == torch.float16
    out.float().sum().backward()
    w = [p.detach().double() for p in m.parameters()]
    ps = [x.double().requires_grad_(), *(t.requires_grad_() for t in w)]
    zeros = torch.zeros(2, 8, dtype=torch.float64)
    ref, _, _ = naive_recurrence(ps[0], ps[1], ps[2], ps[3], zeros, zeros, spec)
    ref.sum().backward()
    assert rel(out, ref) < 1e-2
    for p, q in zip(m.parameters(), ps[1:]):
        assert p.grad.dtype == torch.float32
        assert rel(p.grad, q.grad) < 2e-2


def test_auto_backend_takes_kernels_only_on_cuda_and_supported_dtypes():
    spec = parse_gate("UR")
    assert resolve_backend("auto", spec, torch.device("cpu"), torch.float32) is reference_recurrence
    assert resolve_backend("triton", spec, torch.device("cpu"), torch.float32) is triton_recurrence
    assert is_available(torch.device("cpu"))  # the interpreter is on in tests
    if is_available(torch.device("cuda")):
        assert resolve_backend("auto", spec, torch.device("cuda"), torch.float32) is triton_recurrence
        assert resolve_backend("auto", spec, torch.device("cuda"), torch.float64) is reference_recurrence
        assert resolve_backend("auto", parse_gate("OM"), torch.device("cuda"), torch.float32) is reference_recurrence


def test_bad_options_get_clear_errors():
    spec = parse_gate("UR")
    ps = [p.float() for p in make_problem(spec, 2, 1, 2, 3, torch.float32)]
    with pytest.raises(TypeError, match="chunk_sise"):
        triton_recurrence(*ps, spec, chunk_sise=4)
    with pytest.raises(ValueError, match="kernel"):
        triton_recurrence(*ps, spec, kernel="fast")
    with pytest.raises(ValueError, match="chunk_size"):
        triton_recurrence(*ps, spec, chunk_size=0)
    with pytest.raises(ValueError, match="dot_precision"):
        triton_recurrence(*ps, spec, dot_precision="tf64")
    with pytest.raises(TypeError, match="float64"):
        triton_recurrence(*[p.double() for p in ps], spec)
    with pytest.raises(TypeError, match="unknown triton backend option"):
        urlstm(torch.randn(2, 1, 2), [tuple(ps[1:4])], backend="triton", tile=16)


def test_unsupported_gate_falls_back_with_a_warning():
    m = URLSTM(3, 4, gate="OM", backend="triton")
    m_ref = URLSTM(3, 4, gate="OM", backend="reference")
    m_ref.load_state_dict(m.state_dict())
    x = torch.randn(2, 1, 3)
    with pytest.warns(UserWarning, match="cumax"):
        out = m(x)[0]
    assert torch.equal(out, m_ref(x)[0])


def test_inference_writes_no_gates_and_matches():
    """Under no_grad the forward skips the per-step gates (nothing to save) and gives the same outputs."""
    spec = parse_gate("UR")
    ps = [p.float() for p in make_problem(spec, 3, 2, 3, 5, torch.float32)]
    with_grad = triton_recurrence(*[p.clone().requires_grad_() for p in ps], spec)
    with torch.no_grad():
        import urlstm_triton.kernels as k
        calls = []
        orig = k.forward_sequence
        k.forward_sequence = lambda *a: (calls.append(a[4]), orig(*a))[1]
        try:
            no_grad = triton_recurrence(*ps, spec)
        finally:
            k.forward_sequence = orig
    assert calls == [None]
    for a, b in zip(no_grad, with_grad):
        assert torch.equal(a, b.detach())


def test_cuda_graph_option_needs_cuda():
    spec = parse_gate("UR")
    ps = [p.float() for p in make_problem(spec, 2, 1, 2, 3, torch.float32)]
    with pytest.raises(ValueError, match="cuda_graph"):
        triton_recurrence(*ps, spec, cuda_graph=True)


# ---- GPU: compiled kernels, bf16 included (run by scripts/gpu_check.sh) ----


def loop_error(spec, ps, dtype) -> float:
    """Largest relative error (outputs, states, every gradient) of PyTorch's own loop run in ``dtype`` on a
    problem, against float64: how far *any* implementation in that dtype must land, the control for a
    kernel's error."""
    ref_in = [p.clone().requires_grad_() for p in ps]
    ref = naive_recurrence(*ref_in, spec)
    probes = [torch.randn_like(r) for r in ref]
    ref_g = torch.autograd.grad(ref, ref_in, probes)
    ins = [p.to(dtype).requires_grad_() for p in ps]
    out = naive_recurrence(*ins, spec)
    g = torch.autograd.grad(out, ins, [pr.to(o.dtype) for pr, o in zip(probes, out)])
    return max(rel(a, b) for a, b in zip(list(out) + list(g), list(ref) + list(ref_g)))


@pytest.mark.parametrize("code,dims,scale", [("UR", (16, 8, 32, 96), 0.6), ("lstm", (6, 67, 40, 200), 0.6),
                                             ("UR", (37, 24, 48, 80), 0.6), ("U-", (64, 10, 2, 256), 0.3)])
def test_gpu_problems_are_well_conditioned(code, dims, scale):
    """The GPU tests' problems (conditioned weights) are ones on which PyTorch's loop in fp32 and bf16 meets
    the tolerances, so a kernel that misses them is wrong; with O(1) weights (the CPU tests' tiny sizes
    survive them) the same loop misses them: the first GPU run failed 30 tests that way, on correct kernels."""
    spec = parse_gate(code)
    ps = make_problem(spec, *dims, torch.float64, scale=scale, conditioned=True)
    assert loop_error(spec, ps, torch.float32) < TOL[torch.float32] / 10
    assert loop_error(spec, ps, torch.bfloat16) < TOL[torch.bfloat16]
    if dims == (16, 8, 32, 96):  # the counter-example: the unconditioned problem the tests used before
        chaotic = make_problem(spec, *dims, torch.float64, scale=scale)
        assert loop_error(spec, chaotic, torch.bfloat16) > TOL[torch.bfloat16]


CUDA_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", CUDA_DTYPES, ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("code", ["UR", "U-", "lstm"])
@pytest.mark.parametrize("T,B,I,H", [(16, 8, 32, 96), (6, 67, 40, 200), (3, 1, 5, 7)])
def test_cuda_matches_float64(code, dtype, T, B, I, H):
    spec = parse_gate(code)
    ps = make_problem(spec, T, B, I, H, dtype, device="cuda", conditioned=True)
    assert_close(errors(spec, ps, dtype), TOL[dtype])


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cuda_larger_sizes_meet_the_issue_tolerance(dtype):
    """Issue 3's accuracy targets at a realistic size: fp32 < 1e-4, bf16 < 2e-2 (all outputs and grads)."""
    spec = parse_gate("UR")
    ps = make_problem(spec, 48, 128, 256, 512, dtype, device="cuda", scale=0.3, conditioned=True)
    assert_close(errors(spec, ps, dtype), {torch.float32: 1e-4, torch.bfloat16: 2e-2}[dtype])


@pytest.mark.cuda
def test_cuda_tf32_option_is_close():
    spec = parse_gate("UR")
    ps = make_problem(spec, 8, 16, 32, 64, torch.float32, device="cuda", conditioned=True)
    assert_close(errors(spec, ps, torch.float32, dot_precision="tf32"), 3e-3)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cuda_graph_and_chunks_match_plain(dtype):
    """cuda_graph=True replays the same kernels (bitwise equal); chunked runs agree to rounding. Two calls
    with the graph reuse the cached graph with new inputs."""
    spec = parse_gate("UR")
    for seed in (0, 1):
        torch.manual_seed(seed)
        ps = [p.to(dtype) for p in make_problem(spec, 37, 24, 48, 80, dtype, device="cuda", conditioned=True)]
        probe = [torch.randn(37, 24, 80, device="cuda", dtype=dtype)]
        res = {}
        for name, opts in (("plain", {}), ("graph", {"cuda_graph": True}), ("chunk", {"chunk_size": 8}),
                           ("chunk+graph", {"chunk_size": 8, "cuda_graph": True})):
            leaves = [p.clone().requires_grad_() for p in ps]
            out = triton_recurrence(*leaves, spec, **opts)
            loss = (out[0].float() * probe[0].float()).sum() + out[1].float().sum() + out[2].sum()
            res[name] = list(out) + list(torch.autograd.grad(loss, leaves))
        for a, b in zip(res["plain"], res["graph"]):
            assert torch.equal(a, b)
        for a, b in zip(res["chunk"], res["chunk+graph"]):
            assert torch.equal(a, b)
        for a, b in zip(res["plain"], res["chunk"]):
            assert rel(b, a) < (1e-6 if dtype == torch.float32 else 1e-2)


@pytest.mark.cuda
def test_cuda_auto_backend_and_autocast_bf16():
    torch.manual_seed(0)
    m = URLSTM(32, 64, num_layers=2, bidirectional=True).cuda()  # backend="auto" -> triton on CUDA
    ref = URLSTM(32, 64, num_layers=2, bidirectional=True, backend="reference").cuda()
    ref.load_state_dict(m.state_dict())
    x = torch.randn(20, 16, 32, device="cuda")
    outs = []
    for mod in (m, ref):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out, (hn, cn) = mod(x)
        assert out.dtype == torch.bfloat16
        out.float().square().mean().backward()
        outs.append([out] + [p.grad for p in mod.parameters()])
        assert all(p.grad.dtype == torch.float32 for p in mod.parameters())
    for a, b in zip(*outs):  # two bf16 computations, each within 2e-2 of float64
        assert rel(a, b) < 4e-2


def test_backend_options_with_the_reference():
    """auto on a CPU runs the reference: kernel options are ignored with a warning (so a model configured
    for a GPU still runs on a laptop); an explicit reference backend rejects them."""
    m = URLSTM(3, 4, backend="auto", chunk_size=2, cuda_graph=False)
    with pytest.warns(UserWarning, match="chunk_size"):
        out, _ = m(torch.randn(5, 2, 3))
    assert out.shape == (5, 2, 4)
    with pytest.raises(TypeError, match="backend='reference' takes no backend options"):
        URLSTM(3, 4, backend="reference", chunk_size=2)(torch.randn(5, 2, 3))


@pytest.mark.parametrize("batch,hidden", [(1, 7), (10, 256), (50, 1024), (64, 1024), (128, 3072), (256, 1024),
                                          (1000, 64)])
def test_gpu_tile_planner_stays_legal(batch, hidden):
    """Tiles the GPU path picks: powers of two, MMA dimensions >= 16 (tl.dot) and >= 64 wide where the hidden
    size allows, accumulators and epilogue tiles within the register budget, a full wave of programs where
    batch and hidden size allow it; the smallest tiles in the interpreter."""
    import math

    from urlstm_triton.kernels import TileConfig, pick_config
    from urlstm_triton.kernels import step_plan as sp

    for elem in (2, 4):
        c = pick_config(batch, hidden, True, num_sms=132, elem_bytes=elem)
        f, b = c.fwd, c.bwd
        assert f.block_b >= 16 and f.block_k >= 16 and 4 * f.block_h >= 16 and b.block_h >= 16
        assert 4 * f.block_h >= (64 if hidden >= 16 else 16) and b.block_h >= (64 if hidden >= 64 else 16)
        assert f.block_b * 4 * f.block_h <= sp.MAX_ACC_PER_THREAD * 32 * f.num_warps
        assert b.block_b * b.block_h <= sp.MAX_ACC_PER_THREAD * 32 * b.num_warps
        for t in (f, b):
            assert t.block_b * t.epi_h <= sp.EPI_PER_THREAD * 32 * t.num_warps
        for t, k_len in ((f, hidden), (b, 4 * hidden)):
            programs = math.ceil(batch / t.block_b) * t.split_k * math.ceil(hidden / t.block_h)
            # a full wave wherever the smallest legal tiles, split as far as the reduction allows, would give one
            # MMA width >= 64 where H allows: forward 4 * block_h, backward block_h
            narrowest = (64 if hidden >= 64 else 16) if t is b else (16 if hidden >= 16 else 4)
            best = math.ceil(batch / 16) * math.ceil(hidden / narrowest) * min(max(sp.SPLITS), math.ceil(k_len / 32))
            assert programs >= 132 or best < 132, (t, programs)
    assert pick_config(batch, hidden, False) == TileConfig()


def test_planner_caches_and_rejects_bad_input():
    from urlstm_triton.kernels import pick_config

    assert pick_config(128, 3072, True) is pick_config(128, 3072, True)
    with pytest.raises(ValueError, match="dot_precision"):
        pick_config(4, 8, True, dot_precision="tf64")
    with pytest.raises(ValueError, match="batch and hidden"):
        pick_config(0, 8, True)


def _mode_spec(mode):
    from urlstm_triton import kernels as k

    return {k.MODE_TIED: parse_gate("U-"), k.MODE_REFINE: parse_gate("UR"), k.MODE_CLASSIC: parse_gate("lstm")}[mode]


def assert_follows_launch_contract(family, mode, T=4, B=3, H=5, split=1, cfg=None, half=False):
    """Check a kernel family against the launch-helper contract of ``urlstm_triton.kernels`` directly:
    ``forward_sequence`` writes hs[1:], cs[1:] and the activated gates; ``backward_sequence`` writes dz and
    dL/dc_{-1}, with the final-state gradient (``dh_last``) or, for an earlier chunk, the next chunk's first
    dz (``dz_next``). float64 autograd is the oracle. ``half``: fp16 operands, gates saved in fp16 (the
    16-bit storage of half-precision runs), looser bounds."""
    from urlstm_triton.kernels import TileConfig

    spec = _mode_spec(mode)
    G = spec.num_gates
    cfg = cfg or TileConfig()
    cd = torch.float16 if half else torch.float32  # compute dtype: operands, h, dz, saved gates
    tol = 2e-3 if half else 1e-5
    xproj = torch.randn(T, B, G * H, dtype=torch.float64)
    w_hh = torch.randn(G * H, H, dtype=torch.float64) * 0.5
    h0, c0 = torch.randn(B, H, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (xproj, h0, c0)]
    h, c, hs_ref, cs_ref, zs = leaves[1], leaves[2], [h0], [c0], []
    for t in range(T):
        z = leaves[0][t] + h @ w_hh.t()
        zs.append(z.detach())
        h, c = cell_update(z, c, spec)
        hs_ref.append(h)
        cs_ref.append(c)
    d_out, dh_last, dc_last = torch.randn(T, B, H, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64), \
        torch.randn(B, H, dtype=torch.float64)
    loss = (torch.stack(hs_ref[1:]) * d_out).sum() + (h * dh_last).sum() + (c * dc_last).sum()
    dxproj, _, dc0 = torch.autograd.grad(loss, leaves)

    f32 = dict(dtype=torch.float32)
    hs = torch.empty(T + 1, B, H, dtype=cd)
    cs = torch.empty(T + 1, B, H, **f32)
    gates = torch.full((T, B, G * H), float("nan"), dtype=cd)  # poisoned: every element must be written
    hs[0], cs[0] = h0, c0
    family.forward_sequence(xproj.to(cd).contiguous(), w_hh.to(cd).contiguous(), hs, cs, gates, mode, cfg)
    assert rel(hs[1:], torch.stack(hs_ref[1:]).detach()) < tol
    assert rel(cs[1:], torch.stack(cs_ref[1:]).detach()) < tol
    z = torch.stack(zs)
    acts = [torch.sigmoid, torch.tanh, torch.sigmoid] if G == 3 else (
        [torch.sigmoid, torch.sigmoid, torch.tanh, torch.sigmoid])
    expected_gates = torch.cat([a(zq) for a, zq in zip(acts, z.chunk(G, -1))], -1)
    assert rel(gates, expected_gates) < tol

    w = w_hh.to(cd).contiguous()
    # one call over the whole sequence ...
    dzs = torch.full((T, B, G * H), float("nan"), dtype=cd)
    dc = dc_last.float().clone()
    family.backward_sequence(d_out.to(cd).contiguous(), w, gates, cs, dzs, dc, mode, cfg,
                             dh_last=dh_last.float().contiguous())
    assert rel(dzs, dxproj) < tol and rel(dc, dc0) < tol
    # ... and the same in two chunks, the earlier one fed the later one's first dz
    dzs2 = torch.full((T, B, G * H), float("nan"), dtype=cd)
    dc = dc_last.float().clone()
    family.backward_sequence(d_out[split:].to(cd).contiguous(), w, gates[split:].contiguous(),
                             cs[split:].contiguous(), dzs2[split:], dc, mode, cfg, dh_last=dh_last.float().contiguous())
    family.backward_sequence(d_out[:split].to(cd).contiguous(), w, gates[:split].contiguous(),
                             cs[:split + 1].contiguous(), dzs2[:split], dc, mode, cfg, dz_next=dzs2[split].clone())
    assert rel(dzs2, dxproj) < tol and rel(dc, dc0) < tol


@pytest.mark.parametrize("mode", [0, 1, 2], ids=["tied", "refine", "classic"])
def test_step_kernels_follow_the_launch_contract(mode):
    from urlstm_triton import kernels

    assert_follows_launch_contract(kernels, mode)


def _tiles(fwd, bwd):
    from urlstm_triton.kernels import TileConfig, Tiles

    return TileConfig(fwd=Tiles(*fwd[:3], split_k=fwd[3], epi_h=fwd[4]),
                      bwd=Tiles(*bwd[:3], split_k=bwd[3], epi_h=bwd[4]))


# (block_b, block_h, block_k, split_k, epi_h) per direction. H = 20 and 37 make ragged hidden tiles and
# reduction slices (empty ones too, where split_k * block_k > H or G*H); B = 17 a ragged batch tile;
# epi_h < block_h runs the epilogue in sub-tiles through the workspace.
SPLIT_TILES = {
    "fwd-split2.bwd-split3-subtiles": ((16, 4, 16, 2, 4), (16, 16, 16, 3, 4)),
    "fwd-split3-subtiles.bwd-wide-subtiles": ((16, 8, 16, 3, 2), (16, 32, 16, 1, 8)),
    "empty-slices": ((32, 4, 16, 4, 4), (16, 16, 16, 16, 16)),
    "fwd-subtiles-no-split.bwd-split2": ((16, 16, 16, 1, 4), (32, 16, 16, 2, 16)),
}


@pytest.mark.parametrize("mode", [0, 1, 2], ids=["tied", "refine", "classic"])
@pytest.mark.parametrize("name", list(SPLIT_TILES))
@pytest.mark.parametrize("B,H", [(3, 20), (17, 37)])
def test_split_k_and_subtiled_epilogues_follow_the_launch_contract(mode, name, B, H):
    """Split reductions (fp32 partials summed by the last program of a tile), wide backward tiles whose
    epilogue runs in sub-tiles, ragged tiles and empty reduction slices: same results as float64."""
    from urlstm_triton import kernels

    if B == 17 and mode != 1:
        pytest.skip("the ragged batch tile is mode-independent: the refine mode covers it")
    assert_follows_launch_contract(kernels, mode, T=3, B=B, H=H, split=1, cfg=_tiles(*SPLIT_TILES[name]))


@pytest.mark.parametrize("mode", [0, 1, 2], ids=["tied", "refine", "classic"])
def test_half_precision_gates_are_stored_in_the_compute_dtype(mode):
    """fp16 operands with the gates saved in fp16 (16-bit storage), split and direct paths."""
    from urlstm_triton import kernels

    assert_follows_launch_contract(kernels, mode, T=3, B=5, H=20, half=True,
                                   cfg=_tiles(*SPLIT_TILES["fwd-split3-subtiles.bwd-wide-subtiles"]))
    assert_follows_launch_contract(kernels, mode, T=3, B=5, H=20, half=True)


def _gemm_tiles(fwd=(16, 4), bwd=(16, 16), other=None):
    """A config whose forward and/or backward product runs as the library GEMM (``Tiles.gemm``), with
    ``block_b x block_h`` gate-math tiles; ``other``: the fused tiles of a direction left fused."""
    from urlstm_triton.kernels import TileConfig, Tiles

    def tiles(blocks):
        return Tiles(*blocks, 16, gemm=True) if blocks else (other or Tiles())

    return TileConfig(fwd=tiles(fwd), bwd=tiles(bwd))


@pytest.mark.parametrize("mode", [0, 1, 2], ids=["tied", "refine", "classic"])
@pytest.mark.parametrize("B,H", [(3, 20), (17, 37)])
@pytest.mark.parametrize("which", ["both", "fwd", "bwd"])
def test_library_gemm_steps_follow_the_launch_contract(mode, B, H, which):
    """``Tiles.gemm``: the step's product by ``torch.mm`` (fp32 out), the gate math by its own Triton kernel,
    in one direction or both, beside the fused kernel in the other; ragged batch and hidden tiles; the whole
    sequence, and two chunks joined by ``dz_next``; fp32 and fp16 (gates stored in fp16): float64 is the oracle."""
    from urlstm_triton import kernels

    if B == 17 and mode != 1:
        pytest.skip("the ragged batch tile is mode-independent: the refine mode covers it")
    cfg = _gemm_tiles(fwd=None if which == "bwd" else (16, 4), bwd=None if which == "fwd" else (16, 16))
    assert_follows_launch_contract(kernels, mode, T=3, B=B, H=H, split=1, cfg=cfg)
    if which == "both":
        assert_follows_launch_contract(kernels, mode, T=3, B=B, H=H, split=1, cfg=cfg, half=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_library_gemm_every_gradient_through_the_backend(dtype):
    """The library-GEMM steps through the whole backend: outputs, final states and every gradient against
    float64, saved everything and chunked (``dz_next`` across chunk boundaries), gates in both dtypes."""
    spec = parse_gate("UR")
    ps = make_problem(spec, 5, 5, 6, 20, dtype)
    assert_close(errors(spec, ps, dtype, config=_gemm_tiles(), kernel="step"), TOL[dtype])
    assert_close(errors(spec, ps, dtype, config=_gemm_tiles(), kernel="step", chunk_size=2), TOL[dtype])


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", CUDA_DTYPES, ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("opts", [{}, {"chunk_size": 5}, {"cuda_graph": True}], ids=["plain", "chunked", "graph"])
def test_cuda_library_gemm_matches_float64(dtype, opts):
    """On a GPU the library-GEMM step runs cuBLAS with an fp32 output (``torch.mm``'s ``out_dtype``), a path
    the CPU tests cannot take: issue 3's bounds, plain, chunked and graph-replayed (cuBLAS under capture)."""
    spec = parse_gate("UR")
    ps = make_problem(spec, 12, 67, 40, 200, dtype, device="cuda", conditioned=True)
    assert_close(errors(spec, ps, dtype, config=_gemm_tiles(fwd=(16, 64), bwd=(16, 64)), kernel="step", **opts),
                 TOL[dtype])


def test_library_gemm_tiles_are_checked():
    from urlstm_triton.kernels import Tiles

    assert Tiles(32, 64, 16, gemm=True).gemm and not Tiles().gemm
    with pytest.raises(ValueError, match="split_k must be 1"):
        Tiles(32, 64, 16, 2, gemm=True)
    with pytest.raises(ValueError, match="gemm must be True or False"):
        Tiles(gemm="yes")


def _pdl_tiles():
    """Tiles of both directions with programmatic dependent launch (``Tiles.pdl``), split and unsplit."""
    from urlstm_triton.kernels import TileConfig, Tiles

    return TileConfig(fwd=Tiles(16, 8, 16, split_k=2, epi_h=4, pdl=True), bwd=Tiles(16, 16, 16, pdl=True))


def test_pdl_tiles_are_checked_and_honoured_only_where_the_gpu_has_pdl(monkeypatch):
    """``Tiles.pdl`` is a launch mode of the fused step kernels: on sm_90+ with a triton that has grid dependency
    control the launch carries ``launch_pdl`` and the kernel its ``PDL`` wait/release; elsewhere (the CPU, the
    interpreter, older GPUs) it is ignored."""
    from urlstm_triton.kernels import Tiles, common

    assert Tiles(pdl=True).pdl and not Tiles().pdl
    with pytest.raises(ValueError, match="pdl must be True or False"):
        Tiles(pdl=1)
    with pytest.raises(ValueError, match="pdl=True applies to the fused step kernels"):
        Tiles(16, 64, 16, gemm=True, pdl=True)
    assert common.pdl_launch_options(Tiles(pdl=True), "cpu") == {"PDL": False}
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    for major, honoured in ((9, True), (10, True), (8, False)):
        monkeypatch.setattr(common, "_capability_major", lambda index, m=major: m)
        assert common.pdl_supported("cuda:0") is (honoured and common.HAS_GDC)
        assert common.pdl_launch_options(Tiles(pdl=True), "cuda:0") == (
            {"PDL": True, "launch_pdl": True} if honoured and common.HAS_GDC else {"PDL": False})
        assert common.pdl_launch_options(Tiles(), "cuda:0") == {"PDL": False}
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not common.pdl_supported("cuda:0")  # the interpreter has no grid dependency control
    monkeypatch.setattr(common, "HAS_GDC", False)
    monkeypatch.delenv("TRITON_INTERPRET")
    assert not common.pdl_supported("cuda:0")  # a triton without it


@pytest.mark.parametrize("mode", [0, 1, 2], ids=["tied", "refine", "classic"])
def test_pdl_tiles_follow_the_launch_contract(mode):
    """Tiles with ``pdl=True`` run everywhere (in the interpreter without the launch mode, which it lacks)."""
    from urlstm_triton import kernels

    assert_follows_launch_contract(kernels, mode, T=3, B=3, H=20, split=1, cfg=_pdl_tiles())


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", CUDA_DTYPES, ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("opts", [{}, {"chunk_size": 5}, {"cuda_graph": True}], ids=["plain", "chunked", "graph"])
def test_cuda_pdl_step_kernels_match_float64(dtype, opts):
    """On an sm_90+ GPU the step launches overlap by programmatic dependent launch (each program waits for the
    previous step before touching memory): issue 3's bounds, plain, chunked and graph-replayed (the launches
    captured with their programmatic edges). On older GPUs the same tiles run without it."""
    spec = parse_gate("UR")
    ps = make_problem(spec, 12, 67, 40, 200, dtype, device="cuda", conditioned=True)
    assert_close(errors(spec, ps, dtype, config=_pdl_tiles(), kernel="step", **opts), TOL[dtype])


def test_library_gemm_needs_mm_out_dtype(monkeypatch):
    """The probe agrees with torch (an fp32 product of bf16 operands on the meta device, which needs no GPU).
    Without ``out_dtype`` (torch < 2.8) the tuner does not offer the library-GEMM step, the doctor does not check
    it, and an explicit ``Tiles(gemm=True)`` on 16-bit GPU operands raises a clear error before any launch;
    fp32 operands and the CPU never need it."""
    from urlstm_triton import doctor
    from urlstm_triton.kernels import backward_sequence, common, forward_sequence, step_plan

    a = torch.empty(3, 4, dtype=torch.bfloat16, device="meta")
    try:
        supported = torch.mm(a, a.t(), torch.float32).dtype == torch.float32
    except TypeError:  # no such overload
        supported = False
    assert common.library_gemm_fp32_out() == supported
    common.check_library_gemm(a)  # what this torch can do passes

    monkeypatch.setattr(common, "library_gemm_fp32_out", lambda: False)
    monkeypatch.setattr(step_plan, "library_gemm_fp32_out", lambda: False)
    for backward in (False, True):
        assert not any(t.gemm for t in step_plan.tuning_candidates(128, 3072, 4, 2, 2, backward))
    assert "library GEMM + gate kernel" not in [c[0] for c in doctor.family_cases("step", True, 132)]
    common.check_library_gemm(a.float())  # fp32: torch.mm without out_dtype
    common.check_library_gemm(torch.empty(3, 4, dtype=torch.bfloat16))  # the CPU: the product in fp32
    T, B, H, G = 2, 3, 20, 4
    meta = dict(dtype=torch.bfloat16, device="meta")
    xproj, w, hs = torch.empty(T, B, G * H, **meta), torch.empty(G * H, H, **meta), torch.empty(T + 1, B, H, **meta)
    cs = torch.empty(T + 1, B, H, dtype=torch.float32, device="meta")
    with pytest.raises(RuntimeError, match=r"needs torch.mm's out_dtype \(torch >= 2.8\)"):
        forward_sequence(xproj, w, hs, cs, None, 1, _gemm_tiles())
    with pytest.raises(RuntimeError, match="gemm=False"):
        backward_sequence(hs[1:], w, torch.empty_like(xproj), cs, torch.empty_like(xproj),
                          torch.empty(B, H, dtype=torch.float32, device="meta"), 1, _gemm_tiles(),
                          dh_last=torch.empty(B, H, dtype=torch.float32, device="meta"))


@pytest.mark.cuda
def test_cuda_accelerate_bf16_mixed_precision_trains():
    """Accelerate's mixed_precision='bf16' autocasts the forward: the kernels run in bf16, the fp32
    parameters get fp32 gradients and an optimiser step lowers the loss."""
    accelerate = pytest.importorskip("accelerate")
    torch.manual_seed(0)
    acc = accelerate.Accelerator(mixed_precision="bf16")
    model = URLSTM(16, 32, num_layers=2, backend="triton")
    head = torch.nn.Linear(32, 1)
    net = torch.nn.ModuleDict({"rnn": model, "head": head})
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    net, opt = acc.prepare(net, opt)
    x = torch.randn(12, 8, 16, device=acc.device)
    y = x.sum(-1, keepdim=True).cumsum(0) * 0.1
    losses = []
    for _ in range(5):
        with acc.autocast():
            out, _ = net["rnn"](x)
            assert out.dtype == torch.bfloat16
            loss = torch.nn.functional.mse_loss(net["head"](out).float(), y)
        opt.zero_grad()
        acc.backward(loss)
        assert all(p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
                   for p in net["rnn"].parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("name", ["fwd-split2.bwd-split3-subtiles", "empty-slices"])
def test_split_tiles_every_gradient_through_the_backend(dtype, name):
    """The split-K and sub-tiled paths through the whole backend (input projection, autograd, weight GEMMs):
    outputs, final states and all six gradients per gate block against float64, saved everything and chunked,
    with gates saved in the compute dtype (the default) and in fp32."""
    spec = parse_gate("UR")
    cfg = _tiles(*SPLIT_TILES[name])
    ps = make_problem(spec, 3, 5, 6, 20, dtype)
    assert_close(errors(spec, ps, dtype, config=cfg, kernel="step"), TOL[dtype])
    assert_close(errors(spec, ps, dtype, config=cfg, kernel="step", chunk_size=2), TOL[dtype])
    assert_close(errors(spec, ps, dtype, config=cfg, kernel="step", gate_storage="fp32"), TOL[dtype])


def test_bad_gate_storage_is_refused():
    spec = parse_gate("UR")
    ps = [p.float() for p in make_problem(spec, 2, 1, 2, 3, torch.float32)]
    with pytest.raises(ValueError, match="gate_storage"):
        triton_recurrence(*ps, spec, gate_storage="fp8")
