"""CUDA-graph replay of a kernel family's launch helpers: one graph launch instead of K kernel launches.

:class:`GraphedKernels` wraps any family that follows the launch-helper contract (``kernels/__init__.py``)
and follows it too. A graph is captured on the caller's own buffers: the cache key is every argument's shape,
dtype, device *and address*, plus the mode and tile config, so a replay reads and writes exactly the tensors
of the call that matches it and moves no data of its own (no staging copies in or out). The first call with a
key runs the family eagerly (compiling its kernels; that run's results are the call's results) and captures
the graph; later calls with the same key replay it.

It pays off where calls repeat on the same buffers, which is what a training loop does: PyTorch's caching
allocator hands the same blocks back for the same sequence of allocations, so every iteration after the first
replays. Where buffers move on every call, each call captures again (about the cost of the launches it
records, plus instantiation): :class:`GraphedKernels` warns once when most calls capture. The graphs keep no
tensor alive and read no freed memory (a key only matches tensors that are at those addresses now); they
own the families' internal scratch (split-K workspaces, barrier counters) in their private memory pool. At
most ``max_graphs`` are kept (least recently used dropped). CUDA only.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Callable, Optional

import torch


def _sig(t: Optional[torch.Tensor]):
    return None if t is None else (tuple(t.shape), t.dtype, t.device, t.data_ptr())


def capture_cuda_graph(fn: Callable[[], None]):
    """Run ``fn`` once on a side stream (its results are the call's; it compiles kernels, which must not
    happen inside a capture), then capture it into a graph. Returns the graph (``.replay()``)."""
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
    """``forward_sequence``/``backward_sequence`` of ``family``, replayed from CUDA graphs captured on the
    caller's buffers. ``capture``: how a graph is made (tests pass a stand-in; on a GPU the default)."""

    THRASH_MIN_CALLS = 16  # after this many calls, warn (once) if more than half of them captured

    def __init__(self, family, max_graphs: int = 256, capture: Callable = capture_cuda_graph):
        self.family = family
        self.max_graphs = max_graphs
        self.capture = capture
        self._cache: "OrderedDict[tuple, object]" = OrderedDict()
        self.calls = 0
        self.captures = 0
        self._warned = False

    def _run(self, key, fn: Callable[[], None], device) -> None:
        self.calls += 1
        graph = self._cache.get(key)
        if graph is None:
            self.captures += 1
            self._cache[key] = self.capture(fn)  # runs fn once: these are this call's results
            while len(self._cache) > self.max_graphs:
                self._cache.popitem(last=False)
            self._maybe_warn()
        else:
            self._cache.move_to_end(key)
            graph.replay()
        after = getattr(self.family, "after_replay", None)
        if callable(after):
            after(device)

    def _maybe_warn(self) -> None:
        if not self._warned and self.calls >= self.THRASH_MIN_CALLS and 2 * self.captures > self.calls:
            self._warned = True
            warnings.warn(
                f"cuda_graph=True captured a new graph on {self.captures} of {self.calls} calls: the recurrence's "
                "buffers move between calls, so the graphs are rarely replayed and capturing costs more than it "
                "saves. Keep tensor shapes and the allocation pattern fixed across iterations, or use "
                "cuda_graph=False.", stacklevel=4)

    def forward_sequence(self, xproj, w_hh, hs, cs, gates, mode, config):
        key = ("fwd", _sig(xproj), _sig(w_hh), _sig(hs), _sig(cs), _sig(gates), mode, config)
        self._run(key, lambda: self.family.forward_sequence(xproj, w_hh, hs, cs, gates, mode, config),
                  xproj.device)

    def backward_sequence(self, d_out, w_hh, gates, cs, dzs, dc, mode, config, *, dz_next=None, dh_last=None):
        key = ("bwd", _sig(d_out), _sig(w_hh), _sig(gates), _sig(cs), _sig(dzs), _sig(dc), _sig(dz_next),
               _sig(dh_last), mode, config)
        self._run(key, lambda: self.family.backward_sequence(d_out, w_hh, gates, cs, dzs, dc, mode, config,
                                                             dz_next=dz_next, dh_last=dh_last), d_out.device)


__all__ = ["GraphedKernels", "capture_cuda_graph"]
