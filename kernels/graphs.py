"""CUDA-graph replay of a kernel family's launch helpers: one graph launch instead of K kernel launches.

:class:`GraphedKernels` wraps any family that follows the launch-helper contract (``kernels/__init__.py``)
and follows it too. Per distinct call signature (shapes, dtypes, mode, config, which optional arguments)
it captures the family's helper once over static buffers; each call then copies the inputs into those
buffers, replays the graph, and copies the outputs out. The copies cost one extra pass over the gates
(memory-bound, small next to the step loop); the win is the per-launch CPU overhead of the step kernels,
which dominates at small batch and long sequences. CUDA only; the graphs hold their static buffers, so the
cache keeps at most ``max_graphs`` signatures (least recently used dropped).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch


def _sig(t: Optional[torch.Tensor]):
    return None if t is None else (tuple(t.shape), t.dtype, t.device)


def _capture(fn):
    """Run ``fn`` once on a side stream (compiles kernels, which must not happen inside a capture), then
    capture it into a graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


class GraphedKernels:
    """``forward_sequence``/``backward_sequence`` of ``family``, replayed from cached CUDA graphs."""

    def __init__(self, family, max_graphs: int = 8):
        self.family = family
        self.max_graphs = max_graphs
        self._cache: "OrderedDict[tuple, tuple]" = OrderedDict()

    def _get(self, key, build):
        entry = self._cache.get(key)
        if entry is None:
            entry = build()
            self._cache[key] = entry
            while len(self._cache) > self.max_graphs:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return entry

    def forward_sequence(self, xproj, w_hh, hs, cs, gates, mode, config):
        key = ("fwd", _sig(xproj), _sig(w_hh), _sig(hs), _sig(gates), mode, config)

        def build():
            s = {"xproj": torch.empty_like(xproj), "w_hh": torch.empty_like(w_hh), "hs": torch.zeros_like(hs),
                 "cs": torch.zeros_like(cs), "gates": None if gates is None else torch.empty_like(gates)}
            g = _capture(lambda: self.family.forward_sequence(s["xproj"], s["w_hh"], s["hs"], s["cs"], s["gates"],
                                                              mode, config))
            return g, s

        graph, s = self._get(key, build)
        s["xproj"].copy_(xproj)
        s["w_hh"].copy_(w_hh)
        s["hs"][0].copy_(hs[0])
        s["cs"][0].copy_(cs[0])
        graph.replay()
        hs[1:].copy_(s["hs"][1:])
        cs[1:].copy_(s["cs"][1:])
        if gates is not None:
            gates.copy_(s["gates"])

    def backward_sequence(self, d_out, w_hh, gates, cs, dzs, dc, mode, config, *, dz_next=None, dh_last=None):
        key = ("bwd", _sig(d_out), _sig(w_hh), _sig(gates), _sig(dzs), _sig(dz_next), _sig(dh_last), mode, config)

        def build():
            s = {"d_out": torch.empty_like(d_out), "w_hh": torch.empty_like(w_hh), "gates": torch.empty_like(gates),
                 "cs": torch.empty_like(cs), "dzs": torch.empty_like(dzs), "dc": torch.empty_like(dc),
                 "dz_next": None if dz_next is None else torch.empty_like(dz_next),
                 "dh_last": None if dh_last is None else torch.empty_like(dh_last)}
            g = _capture(lambda: self.family.backward_sequence(
                s["d_out"], s["w_hh"], s["gates"], s["cs"], s["dzs"], s["dc"], mode, config,
                dz_next=s["dz_next"], dh_last=s["dh_last"]))
            return g, s

        graph, s = self._get(key, build)
        for name, t in (("d_out", d_out), ("w_hh", w_hh), ("gates", gates), ("cs", cs), ("dc", dc),
                        ("dz_next", dz_next), ("dh_last", dh_last)):
            if t is not None:
                s[name].copy_(t)
        graph.replay()
        dzs.copy_(s["dzs"])
        dc.copy_(s["dc"])
