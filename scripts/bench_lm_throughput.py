"""Training throughput (tokens/s) of the language model with the UR-LSTM vs torch.nn.LSTM, side by side.

The model is the one ``train/lm.py`` trains (embedding -> dropout -> recurrent core -> projection -> tied
decoder), at the ``wt103`` preset's shape by default (vocab 32000, embedding 1024, hidden 3072, BPTT 128,
batch 128, bf16 autocast on a GPU), fed synthetic tokens. One step = forward, loss, backward, clipping, Adam
step, with the hidden state carried across steps as in truncated BPTT. ``--small`` shrinks everything so it runs
on a CPU in seconds.

    python scripts/bench_lm_throughput.py                    # on the GPU: the issue-4 target
    python scripts/bench_lm_throughput.py --small --steps 5  # anywhere
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F

from urlstm_triton.functional import resolve_backend
from urlstm_triton.gates import parse_gate
from urlstm_triton.lm.config import ModelConfig
from urlstm_triton.lm.model import build_model
from urlstm_triton.reference import reference_recurrence

SHAPES = {
    "wt103": dict(vocab=32000, embed=1024, hidden=3072, batch=128, bptt=128),
    "small": dict(vocab=1000, embed=64, hidden=128, batch=8, bptt=32),
}


def bench(rnn: str, shape: dict, device, steps: int, warmup: int, precision: str, backend: str, gate: str):
    torch.manual_seed(0)
    variant = "lstm" if rnn == "lstm" else gate  # "lstm": torch.nn.LSTM, the baseline
    cfg = ModelConfig(variant=variant, embed=shape["embed"], hidden=shape["hidden"], layers=1, dropout=0.3,
                      backend=backend if rnn != "lstm" else "auto", cuda_graph=rnn == "urlstm-graph")
    model = build_model(cfg, shape["vocab"], shape["bptt"]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator(device="cpu").manual_seed(0)
    tokens = torch.randint(0, shape["vocab"], (shape["bptt"] + 1, shape["batch"]), generator=g).to(device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    state = None

    def step():
        nonlocal state
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits, state = model(tokens[:-1], state)
            loss = F.cross_entropy(logits.float().reshape(-1, shape["vocab"]), tokens[1:].reshape(-1))
        state = tuple(s.detach() for s in state)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        scaler.step(opt)
        scaler.update()
        return loss.detach()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    loss.item()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    n_tok = shape["batch"] * shape["bptt"] * steps
    if rnn != "lstm":
        fn = resolve_backend(backend, parse_gate(gate), device)
        used = "reference" if fn is reference_recurrence else "triton"
    else:
        used = "cudnn" if device.type == "cuda" else "aten"
    return {"rnn": rnn, "backend": used, "tokens_per_s": n_tok / dt, "ms_per_step": 1000 * dt / steps,
            "params_M": sum(p.numel() for p in model.parameters()) / 1e6}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="a tiny model for CPUs and tests")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--precision", choices=("bf16", "fp16", "fp32"), default=None,
                   help="autocast precision (default: bf16 on a GPU, fp32 on a CPU)")
    p.add_argument("--backend", default="auto", choices=("auto", "reference", "triton"), help="URLSTM backend")
    p.add_argument("--gate", default="UR")
    p.add_argument("--rnns", nargs="+", default=["urlstm", "lstm"], choices=("urlstm", "urlstm-graph", "lstm"),
                   help="urlstm-graph: the URLSTM with cuda_graph=True (its step launches replayed from a graph)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default=None, help="also write the results here")
    for k in SHAPES["wt103"]:
        p.add_argument(f"--{k}", type=int, default=None, help=f"override the {k} of the shape")
    a = p.parse_args(argv)
    if a.steps < 1 or a.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    device = torch.device(a.device)
    shape = dict(SHAPES["small" if a.small else "wt103"])
    shape.update({k: getattr(a, k) for k in shape if getattr(a, k) is not None})
    precision = a.precision or ("bf16" if device.type == "cuda" else "fp32")
    results = [bench(r, shape, device, a.steps, a.warmup, precision, a.backend, a.gate) for r in a.rnns]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}, {precision}, shape {shape}, {a.steps} timed steps after {a.warmup} warm-up")
    print(f"{'rnn':12s} {'backend':10s} {'tokens/s':>12s} {'ms/step':>10s} {'params':>8s}")
    base = {r["rnn"]: r["tokens_per_s"] for r in results}.get("lstm")
    for r in results:
        ratio = f"  x{r['tokens_per_s'] / base:.2f} of nn.LSTM" if base and r["rnn"] != "lstm" else ""
        print(f"{r['rnn']:12s} {r['backend']:10s} {r['tokens_per_s']:12.0f} {r['ms_per_step']:10.1f} "
              f"{r['params_M']:7.1f}M{ratio}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"device": name, "precision": precision, "shape": shape, "steps": a.steps,
                       "results": results}, fh, indent=2)
    return results


if __name__ == "__main__":
    main()
