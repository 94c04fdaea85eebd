"""CUDA-graph replay (kernels/graphs.py) keyed on the caller's buffers: the capture itself needs a GPU (see
tests/test_kernels.py::test_cuda_graph_and_chunks_match_plain); its bookkeeping runs here with a stand-in
for the capture that records the function and replays it by calling it again."""
import warnings

import pytest
import torch

from urlstm_triton.kernels.graphs import GraphedKernels


class FakeGraph:
    def __init__(self, fn):
        self.fn = fn
        self.replays = 0

    def replay(self):
        self.replays += 1
        self.fn()


def fake_capture(fn):
    fn()  # the eager run of a real capture: its results are the call's
    return FakeGraph(fn)


class Family:
    """A kernel family that writes h = xproj's first H columns + 1 and counts timeout checks."""

    def __init__(self):
        self.checked = 0

    def forward_sequence(self, xproj, w_hh, hs, cs, gates, mode, config):
        hs[1:] = xproj[..., : hs.shape[-1]] + 1
        cs[1:] = 2.0

    def backward_sequence(self, d_out, w_hh, gates, cs, dzs, dc, mode, config, *, dz_next=None, dh_last=None):
        dzs.fill_(3.0)
        dc.add_(1.0)

    def after_replay(self, device):
        self.checked += 1


def buffers(T=3, B=2, H=4):
    return torch.randn(T, B, 4 * H), torch.randn(4 * H, H), torch.zeros(T + 1, B, H), torch.zeros(T + 1, B, H)


def test_replays_on_the_callers_buffers_with_no_copies():
    fam = Family()
    g = GraphedKernels(fam, capture=fake_capture)
    xproj, w, hs, cs = buffers()
    ptr = hs.data_ptr()
    g.forward_sequence(xproj, w, hs, cs, None, 1, None)
    assert (g.calls, g.captures) == (1, 1) and torch.equal(hs[1:], xproj[..., :4] + 1)
    # the same buffers with new contents: replayed, and the results land in the caller's own tensors
    xproj.copy_(torch.randn_like(xproj))
    hs.zero_()
    g.forward_sequence(xproj, w, hs, cs, None, 1, None)
    assert (g.calls, g.captures) == (2, 1) and hs.data_ptr() == ptr
    assert torch.equal(hs[1:], xproj[..., :4] + 1)
    graph = next(iter(g._cache.values()))
    assert graph.replays == 1
    # other buffers of the same shape: a capture of their own (a key matches only tensors at its addresses)
    xproj2, w2, hs2, cs2 = buffers()
    g.forward_sequence(xproj2, w2, hs2, cs2, None, 1, None)
    assert g.captures == 2 and torch.equal(hs2[1:], xproj2[..., :4] + 1)
    # a different mode or config is another graph too
    g.forward_sequence(xproj, w, hs, cs, None, 0, None)
    assert g.captures == 3
    assert fam.checked == 4  # the family's timeout check after every call


def test_backward_in_place_state_and_lru():
    fam = Family()
    g = GraphedKernels(fam, max_graphs=2, capture=fake_capture)
    d_out, gates, cs, dzs = torch.randn(3, 2, 4), torch.rand(3, 2, 16), torch.zeros(4, 2, 4), torch.empty(3, 2, 16)
    dc, dh = torch.zeros(2, 4), torch.zeros(2, 4)
    w = torch.randn(16, 4)
    for _ in range(3):
        g.backward_sequence(d_out, w, gates, cs, dzs, dc, 1, None, dh_last=dh)
    assert g.captures == 1 and torch.equal(dc, torch.full((2, 4), 3.0))  # dc in/out, updated by every replay
    others = [torch.zeros(2, 4) for _ in range(2)]
    for dc_i in others:
        g.backward_sequence(d_out, w, gates, cs, dzs, dc_i, 1, None, dh_last=dh)
    assert len(g._cache) == 2 and g.captures == 3
    g.backward_sequence(d_out, w, gates, cs, dzs, dc, 1, None, dh_last=dh)  # evicted: captured again
    assert g.captures == 4


def test_warns_once_when_buffers_move_on_every_call():
    g = GraphedKernels(Family(), capture=fake_capture)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(GraphedKernels.THRASH_MIN_CALLS + 4):
            g.forward_sequence(*buffers(), None, 1, None)
    msgs = [str(w.message) for w in caught if "captured a new graph" in str(w.message)]
    assert len(msgs) == 1 and "cuda_graph=False" in msgs[0]


def test_no_warning_when_calls_repeat():
    g = GraphedKernels(Family(), capture=fake_capture)
    args = buffers()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3 * GraphedKernels.THRASH_MIN_CALLS):
            g.forward_sequence(*args, None, 1, None)
    assert g.captures == 1


@pytest.mark.cuda
def test_cuda_graph_replay_moves_no_sequence_sized_tensor():
    """On a GPU: after the first call, a replay allocates nothing and copies nothing (its kernels write the
    caller's buffers): peak memory of a replayed forward equals the memory already held."""
    from urlstm_triton import kernels as K

    torch.manual_seed(0)
    T, B, H = 64, 8, 64
    dev = "cuda"
    xproj = torch.randn(T, B, 4 * H, device=dev, dtype=torch.bfloat16)
    w = (torch.randn(4 * H, H, device=dev) * 0.1).to(torch.bfloat16)
    hs = torch.zeros(T + 1, B, H, device=dev, dtype=torch.bfloat16)
    cs = torch.zeros(T + 1, B, H, device=dev)
    gates = torch.empty(T, B, 4 * H, device=dev, dtype=torch.bfloat16)
    cfg = K.pick_config(B, H, True, num_sms=torch.cuda.get_device_properties(0).multi_processor_count)
    g = GraphedKernels(K)
    g.forward_sequence(xproj, w, hs, cs, gates, K.MODE_REFINE, cfg)
    expected = hs.clone()
    hs[1:].zero_()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    g.forward_sequence(xproj, w, hs, cs, gates, K.MODE_REFINE, cfg)
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() == before and g.captures == 1
    assert torch.equal(hs, expected)
