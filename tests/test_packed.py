"""PackedSequence input, as nn.LSTM takes it: variable-length batches, each sequence stopping at its length."""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from formulas import run_layer
from urlstm_triton import URLSTM, urlstm


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("enforce_sorted", [False, True])
def test_packed_input_identical_to_nn_lstm(bidirectional, enforce_sorted):
    lstm = nn.LSTM(4, 6, num_layers=2, bidirectional=bidirectional).double()
    ours = URLSTM.from_lstm(lstm, backend="reference")
    lengths = [7, 5, 5, 2, 1] if enforce_sorted else [2, 7, 1, 5, 5]
    x = torch.randn(7, 5, 4, dtype=torch.float64)
    D = 2 if bidirectional else 1
    h0 = torch.randn(2 * D, 5, 6, dtype=torch.float64)
    c0 = torch.randn_like(h0)
    for state in (None, (h0, c0)):
        packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
        ref_out, (ref_h, ref_c) = lstm(packed, state)
        out, (h, c) = ours(packed, state)
        assert isinstance(out, nn.utils.rnn.PackedSequence)
        torch.testing.assert_close(out.data, ref_out.data, rtol=1e-12, atol=1e-12)
        assert torch.equal(out.batch_sizes, ref_out.batch_sizes)
        torch.testing.assert_close(h, ref_h, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(c, ref_c, rtol=1e-12, atol=1e-12)
    # gradients through the packed path agree as well
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref_out, (ref_h, _) = lstm(pack_padded_sequence(xa, lengths, enforce_sorted=enforce_sorted), (h0, c0))
    out, (h, _) = ours(pack_padded_sequence(xb, lengths, enforce_sorted=enforce_sorted), (h0, c0))
    (pad_packed_sequence(ref_out)[0].sum() + ref_h.sum()).backward()
    (pad_packed_sequence(out)[0].sum() + h.sum()).backward()
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours.weight_hh_l0.grad, lstm.weight_hh_l0.grad, rtol=1e-10, atol=1e-12)


def test_lengths_give_each_sequence_its_own_final_state_for_the_ur_lstm():
    """UR gates: the state returned for a short sequence is the one after its own last step."""
    m = URLSTM(3, 5, backend="reference").double()
    x = torch.randn(6, 3, 3, dtype=torch.float64)
    lengths = torch.tensor([6, 4, 2])
    out, (h, c) = urlstm(x, m.layer_weights(), gate="UR", lengths=lengths)
    zeros = torch.zeros(1, 5, dtype=torch.float64)
    for b, n in enumerate(lengths.tolist()):
        ref_out, ref_h, ref_c = run_layer("UR", x[:n, b:b + 1], zeros, zeros, *m.layer_weights()[0])
        torch.testing.assert_close(out[:n, b:b + 1], ref_out)
        assert torch.all(out[n:, b] == 0)
        torch.testing.assert_close(h[0, b], ref_h[0])
        torch.testing.assert_close(c[0, b], ref_c[0])


def test_lengths_errors():
    m = URLSTM(3, 5)
    x = torch.randn(6, 3, 3)
    with pytest.raises(ValueError, match="lengths must be sorted in decreasing order"):
        urlstm(x, m.layer_weights(), lengths=torch.tensor([2, 6, 4]))
    with pytest.raises(ValueError, match=r"lengths must be sorted .* in \[1, 6\]"):
        urlstm(x, m.layer_weights(), lengths=torch.tensor([7, 6, 4]))
    with pytest.raises(ValueError, match="1-D integer tensor of 3"):
        urlstm(x, m.layer_weights(), lengths=torch.tensor([6.0, 5.0, 4.0]))
    with pytest.raises(ValueError, match="batched"):
        urlstm(x[:, 0], m.layer_weights(), lengths=torch.tensor([6]))


def test_packed_input_on_the_triton_kernels_matches_the_reference():
    """The ragged segments run on any backend: here the Triton kernels (in the interpreter without a GPU)."""
    ref = URLSTM(3, 16, bidirectional=True, backend="reference")
    fused = URLSTM(3, 16, bidirectional=True, backend="triton")
    fused.load_state_dict(ref.state_dict())
    packed = pack_padded_sequence(torch.randn(5, 3, 3), [3, 5, 1], enforce_sorted=False)
    out_r, (h_r, c_r) = ref(packed)
    out_f, (h_f, c_f) = fused(packed)
    torch.testing.assert_close(out_f.data, out_r.data, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(h_f, h_r, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(c_f, c_r, rtol=1e-4, atol=1e-5)
