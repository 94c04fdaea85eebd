"""Where the gates of a trained run sit: the forget gate ``f`` and the effective forget gate ``g`` per hidden unit,
after training and at initialisation (``scripts/gate_analysis.py``).

Gu et al. (2020) explain the variants by the distribution of their gate activations: a gate has to reach values
near 1 to keep information over long delays, and UGI and the refine gate exist to make that reachable. For a
run of ``train/synthetic.py`` or ``train/vision.py`` this module rebuilds the model from the run's
``config.json``, loads the weights of its newest checkpoint, feeds the task's evaluation inputs through it and
records ``f`` and ``g`` of the first recurrent layer at every step (``lstm``: ``g`` is ``f``, its input gate is
separate). The same model freshly initialised from the run's seed gives the "at initialisation" picture.
Each hidden unit is summarised by its mean over steps and sequences: a unit with mean ``g`` of 0.99 keeps its
cell state for about 100 steps.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch
from torch import Tensor, nn

from ..errors import ConfigError, GateAnalysisError
from ..gates import parse_gate
from ..reference import cell_update, forget_gates
from ..training.checkpoint import load_model_weights, newest_verified
from ..training.config import config_from_dict

_JOBS = ("synthetic", "vision")


def _first_layer(rnn: nn.Module):
    """``(w_ih, w_hh, bias, spec)`` of the first layer (forward direction) of an URLSTM or a torch.nn.LSTM."""
    if isinstance(rnn, nn.LSTM):
        bias = rnn.bias_ih_l0 + rnn.bias_hh_l0 if rnn.bias else None
        return rnn.weight_ih_l0, rnn.weight_hh_l0, bias, parse_gate("lstm")
    w_ih, w_hh, bias = rnn.layer_weights()[0]
    return w_ih, w_hh, bias, rnn.spec


@torch.no_grad()
def gate_trace(rnn: nn.Module, x: Tensor) -> Tuple[Tensor, Tensor]:
    """``f`` and ``g`` (``T, B, H``) of the first layer of ``rnn`` over the batch-first input ``x``
    (``B, T, I``), stepping the cell from a zero state as the layer does."""
    w_ih, w_hh, bias, spec = _first_layer(rnn)
    hidden = w_hh.shape[1]
    xs = x.transpose(0, 1).to(w_ih.dtype)
    xproj = torch.nn.functional.linear(xs, w_ih, bias)
    h = c = xs.new_zeros(xs.shape[1], hidden)
    fs, gs = [], []
    for t in range(xs.shape[0]):
        z = xproj[t] + h @ w_hh.t()
        f, g = forget_gates(z, hidden, spec)
        fs.append(f)
        gs.append(g)
        h, c = cell_update(z, c, spec)
    return torch.stack(fs), torch.stack(gs)


def _load_config(run_dir: Path):
    from .config import SyntheticJobConfig, VisionJobConfig

    path = run_dir / "config.json"
    if not path.is_file():
        raise GateAnalysisError(f"{run_dir}: no config.json (not a run directory of train/synthetic.py or "
                                "train/vision.py)")
    data = json.loads(path.read_text())
    job = str(data.get("job", "")).split("-")[0]
    if job not in _JOBS:
        raise GateAnalysisError(f"{run_dir}: a {data.get('job')!r} run; gate analysis reads synthetic and vision runs")
    # fields a newer trainer added keep their defaults; a field this version does not know is refused, naming it
    try:
        cfg = config_from_dict(SyntheticJobConfig if job == "synthetic" else VisionJobConfig, data["config"], str(path))
    except ConfigError as e:
        raise GateAnalysisError(str(e)) from None
    return job, cfg


def _build(job: str, cfg, seed: int):
    """The run's model freshly initialised as the trainer does (seeded, then the task, then the model) and the
    task's evaluation inputs, batch first (the analysis uses the first ``max_sequences``)."""
    from accelerate.utils import set_seed

    set_seed(seed)
    if job == "synthetic":
        from .synthetic_job import build_model, build_task

        task = build_task(cfg)
        model = build_model(cfg, task)
        return model, torch.cat([x for x, _ in task.eval_batches()])  # the fixed evaluation set
    from .vision import PixelSequences, vision_task
    from .vision_job import build_model, load_data, permutation_for

    _, valid, _ = load_data(cfg)
    spec, _ = vision_task(cfg.data.task)
    model = build_model(cfg, spec.seq_len, spec.channels)
    return model, PixelSequences(valid, permutation_for(cfg)).images.float().div_(255.0)  # the validation set


def _rnn_input(model: nn.Module, x: Tensor) -> Tensor:
    """What the model's recurrent layer receives for input ``x`` (e.g. the copy task's one-hot tokens)."""
    seen: List[Tensor] = []
    handle = model.rnn.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0]


def analyse_run(run_dir, max_sequences: int = 256) -> Dict[str, Any]:
    """``{"variant", "task", "step", "init": {"f", "g"}, "trained": {"f", "g"}}``: per-unit means of ``f`` and
    ``g`` (``H`` values each) at initialisation and with the newest checkpoint's weights."""
    run_dir = Path(run_dir)
    job, cfg = _load_config(run_dir)
    found = newest_verified(run_dir / "checkpoints")
    if found is None:
        raise GateAnalysisError(f"{run_dir}: no complete checkpoint to read the trained weights from")
    path, manifest = found
    step = int(manifest["step"])
    model, x = _build(job, cfg, cfg.train.seed)
    x = x[:max_sequences]
    out: Dict[str, Any] = {"variant": cfg.model.variant, "task": job if job != "synthetic" else cfg.task.name,
                           "step": step, "run": str(run_dir)}
    model.eval()
    for stage in ("init", "trained"):
        if stage == "trained":
            load_model_weights(model, path)
        f, g = gate_trace(model.rnn, _rnn_input(model, x))
        out[stage] = {"f": f.mean(dim=(0, 1)).double(), "g": g.mean(dim=(0, 1)).double()}
    return out


def unit_stats(values: Tensor) -> Dict[str, float]:
    """Summary of per-unit gate means: median, the share of units above 0.9 and 0.99 (memory of more than about
    10 and 100 steps), and the largest implied timescale ``1 / (1 - g)``."""
    v = values.double()
    top = float(v.max())
    return {"median": float(v.median()), "above_0.9": float((v > 0.9).double().mean()),
            "above_0.99": float((v > 0.99).double().mean()),
            "max_timescale": math.inf if top >= 1.0 else 1.0 / (1.0 - top)}


def plot_gates(results: List[Dict[str, Any]], out_path, title: str = "") -> Path:
    """One row per run (variant): histograms of the per-unit mean ``f`` and ``g``, at initialisation (grey) and
    trained (colour), on a logit-spaced axis so that 0.9, 0.99 and 0.999 are as far apart as 0.5 and 0.9."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = torch.sigmoid(torch.linspace(-6.0, 8.0, 57)).tolist()
    fig, axes = plt.subplots(len(results), 2, figsize=(10, 1.9 * len(results) + 0.6), squeeze=False, sharex=True)
    for row, res in zip(axes, results):
        name = parse_gate(res["variant"]).paper_name
        for ax, gate in zip(row, ("f", "g")):
            for stage, color, alpha in (("init", "grey", 0.45), ("trained", "C0", 0.75)):
                vals = res[stage][gate].clamp(edges[0], edges[-1]).tolist()
                ax.hist(vals, bins=edges, color=color, alpha=alpha,
                        label=f"{stage}" + (f" (step {res['step']})" if stage == "trained" else ""))
            ax.set_xscale("logit")
            ax.set_ylabel(f"{name}\nunits", fontsize=8)
            stats = unit_stats(res["trained"][gate])
            ax.set_title(f"{name}: {gate}" + (" (effective forget gate)" if gate == "g" else " (forget gate)")
                         + f", trained: {100 * stats['above_0.99']:.0f}% of units > 0.99", fontsize=8)
            ax.legend(fontsize=7, loc="upper left")
    for ax in axes[-1]:
        ax.set_xlabel("per-unit mean activation (logit scale)")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
