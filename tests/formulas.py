"""Independent step-by-step formulas for the tests: written from the paper's equations, not from the package.

Deliberately naive (explicit exp, explicit loops for cumax) so that a mistake in the package's vectorised
cell cannot be repeated here.
"""
import math

import torch


def sig(x):
    return 1.0 / (1.0 + torch.exp(-x))


def cumax_loop(x):
    e = torch.exp(x - x.max(dim=-1, keepdim=True).values)
    p = e / e.sum(dim=-1, keepdim=True)
    out = torch.zeros_like(p)
    acc = torch.zeros_like(p[..., 0])
    for k in range(p.shape[-1]):
        acc = acc + p[..., k]
        out[..., k] = acc
    return out


def expand_chunks(m, chunk):
    """Master unit k -> hidden units k*chunk .. k*chunk + chunk - 1, by an explicit loop."""
    out = torch.zeros(*m.shape[:-1], m.shape[-1] * chunk, dtype=m.dtype)
    for j in range(out.shape[-1]):
        out[..., j] = m[..., j // chunk]
    return out


def step(code, x_t, h, c, w_ih, w_hh, b, master_chunk=1):
    """One step of variant ``code`` ('UR', 'U-', ..., 'lstm') for a batch; returns (h, c).

    The formulas of docs/variants.md; each written in the form its paper gives."""
    H = h.shape[-1]
    z = x_t @ w_ih.T + h @ w_hh.T + (b if b is not None else 0.0)
    if code == "lstm":
        blk = lambda k: z[:, k * H:(k + 1) * H]  # noqa: E731
        i, f, g, o = sig(blk(0)), sig(blk(1)), torch.tanh(blk(2)), sig(blk(3))
        c = f * c + i * g
        return o * torch.tanh(c), c
    primary, aux = code[0], code[1]
    if aux == "M":
        # ON-LSTM (Shen et al. 2019, eqs. 9-12): f a sigmoid, master gates of H / chunk units:
        # mf = cumax(.), mi = 1 - cumax(.), f_hat = mf * (f * mi + 1 - mi); c = f_hat c + (1 - f_hat) u
        M = H // master_chunk
        z_f, z_mf, z_mi = z[:, :H], z[:, H:H + M], z[:, H + M:H + 2 * M]
        z_u, z_o = z[:, H + 2 * M:2 * H + 2 * M], z[:, 2 * H + 2 * M:]
        f = sig(z_f)
        mf = expand_chunks(cumax_loop(z_mf), master_chunk)
        mi = expand_chunks(1 - cumax_loop(z_mi), master_chunk)
        geff = mf * (f * mi + 1 - mi)
        u, o = torch.tanh(z_u), sig(z_o)
    else:
        blk = lambda k: z[:, k * H:(k + 1) * H]  # noqa: E731
        f = cumax_loop(blk(0)) if primary == "O" else sig(blk(0))
        if aux == "-":
            geff = f
            u, o = torch.tanh(blk(1)), sig(blk(2))
        else:  # refine gate r: the paper's form of 2rf + (1-2r)f^2
            u, o = torch.tanh(blk(2)), sig(blk(3))
            r = sig(blk(1))
            geff = r * (1 - (1 - f) ** 2) + (1 - r) * f ** 2
    c = geff * c + (1 - geff) * u
    return o * torch.tanh(c), c


def run_layer(code, x, h0, c0, w_ih, w_hh, b, master_chunk=1):
    """x (T, B, I) -> out (T, B, H), h_T, c_T."""
    h, c, outs = h0, c0, []
    for t in range(x.shape[0]):
        h, c = step(code, x[t], h, c, w_ih, w_hh, b, master_chunk)
        outs.append(h)
    return torch.stack(outs), h, c


def run_stack(code, x, h0, c0, layer_weights, bidirectional):
    """Multi-layer, optionally bidirectional, composed from run_layer: the nn.LSTM conventions by hand."""
    D = 2 if bidirectional else 1
    L = len(layer_weights) // D
    inp, hn, cn = x, [], []
    for layer in range(L):
        outs = []
        for d in range(D):
            k = layer * D + d
            seq = inp if d == 0 else torch.flip(inp, [0])
            o, h, c = run_layer(code, seq, h0[k], c0[k], *layer_weights[k])
            outs.append(o if d == 0 else torch.flip(o, [0]))
            hn.append(h)
            cn.append(c)
        inp = torch.cat(outs, -1)
    return inp, torch.stack(hn), torch.stack(cn)


def logit(p):
    return math.log(p) - math.log(1 - p)
