"""Loading the community port ur-lstm-torch: same outputs as its formula, written out here step by step."""
import pytest
import torch

from urlstm_triton import convert_ur_lstm_torch_state_dict, urlstm_from_ur_lstm_torch


def _port_state_dict(num_layers, I, H):
    sd = {}
    for i in range(num_layers):
        in_size = I if i == 0 else H
        sd[f"layers.{i}.igates.weight"] = torch.randn(4 * H, in_size, dtype=torch.float64) * 0.4
        sd[f"layers.{i}.igates.bias"] = torch.randn(4 * H, dtype=torch.float64) * 0.4
        sd[f"layers.{i}.hgates.weight"] = torch.randn(4 * H, H, dtype=torch.float64) * 0.4
        sd[f"layers.{i}.hgates.bias"] = torch.randn(4 * H, dtype=torch.float64) * 0.4
        sd[f"layers.{i}.forget_bias"] = torch.randn(H, dtype=torch.float64)
    return sd


def _port_forward(sd, x, num_layers, H):
    """The port's cell: gates = igates(x) + hgates(h); f = sig(z_f + fb), r = sig(z_r - fb), ..."""
    inp = x
    for i in range(num_layers):
        h = torch.zeros(x.shape[1], H, dtype=x.dtype)
        c = torch.zeros_like(h)
        outs = []
        for t in range(x.shape[0]):
            gates = (inp[t] @ sd[f"layers.{i}.igates.weight"].T + sd[f"layers.{i}.igates.bias"]
                     + h @ sd[f"layers.{i}.hgates.weight"].T + sd[f"layers.{i}.hgates.bias"])
            zf, zr, zu, zo = gates.chunk(4, 1)
            fb = sd[f"layers.{i}.forget_bias"]
            f, r = torch.sigmoid(zf + fb), torch.sigmoid(zr - fb)
            u, o = torch.tanh(zu), torch.sigmoid(zo)
            g = 2 * r * f + (1 - 2 * r) * f ** 2
            c = g * c + (1 - g) * u
            h = o * torch.tanh(c)
            outs.append(h)
        inp = torch.stack(outs)
    return inp, h, c


@pytest.mark.parametrize("num_layers", [1, 2])
def test_converted_model_reproduces_port(num_layers):
    I, H = 5, 7
    sd = _port_state_dict(num_layers, I, H)
    model = urlstm_from_ur_lstm_torch(sd, backend="reference")
    x = torch.randn(6, 3, I, dtype=torch.float64)
    out, (h, c) = model(x)
    ref_out, ref_h, ref_c = _port_forward(sd, x, num_layers, H)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h[-1], ref_h)
    torch.testing.assert_close(c[-1], ref_c)


def test_converter_rejects_foreign_state_dicts():
    with pytest.raises(ValueError, match="ur-lstm-torch"):
        convert_ur_lstm_torch_state_dict({"weight_ih_l0": torch.zeros(4, 1)})
    sd = _port_state_dict(1, 3, 4)
    del sd["layers.0.forget_bias"]
    with pytest.raises(ValueError, match="forget_bias"):
        convert_ur_lstm_torch_state_dict(sd)
