"""Layer-level robustness: saturating inputs never produce NaN or inf, forward or backward."""
import pytest
import torch

from urlstm_triton import ALL_VARIANTS, URLSTM


@pytest.mark.parametrize("code", ALL_VARIANTS)
@pytest.mark.parametrize("scale", [1e4, 1e6])
def test_saturating_inputs_stay_finite(code, scale):
    kw = {"chrono_tmax": 50} if code.startswith("C") else {}
    m = URLSTM(3, 9, num_layers=2, gate=code, backend="reference", **kw)
    x = (torch.randn(7, 2, 3) * scale).requires_grad_()
    h0 = torch.randn(2, 2, 9) * scale  # even an absurd initial state
    c0 = torch.randn(2, 2, 9) * scale
    out, (h, c) = m(x, (h0, c0))
    assert torch.isfinite(out).all() and torch.isfinite(h).all() and torch.isfinite(c).all()
    assert out.abs().max() <= 1.0  # h = o * tanh(c) is bounded whatever the input
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


def test_long_sequence_state_stays_bounded():
    """Over thousands of steps the cell state of a tied gate stays a convex mix of its inputs: |c| <= max(|c0|, 1)."""
    m = URLSTM(2, 5, gate="UR", backend="reference")
    x = torch.randn(3000, 1, 2) * 100
    with torch.no_grad():
        out, (h, c) = m(x)
    assert torch.isfinite(out).all() and c.abs().max() <= 1.0 + 1e-6
