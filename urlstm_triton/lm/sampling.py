"""Load a trained language model from its run directory and sample text from it (``scripts/generate.py``)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from ..errors import DataError
from ..training.checkpoint import CheckpointManager, load_model_weights, newest_verified
from .config import ModelConfig
from .model import LanguageModel, build_model


def newest_valid_checkpoint(run_dir: Path) -> Path:
    found = newest_verified(Path(run_dir) / "checkpoints")
    if found is None:
        raise DataError(f"no complete checkpoint under {Path(run_dir) / 'checkpoints'}")
    return found[0]


def load_run_model(run_dir, checkpoint: Optional[str] = None, device="cpu"):
    """``(model in eval mode, SentencePieceProcessor, checkpoint path)`` of a run of ``train/lm.py``."""
    import sentencepiece as spm

    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.exists():
        raise DataError(f"{cfg_path} not found: --run must be a run directory of train/lm.py")
    cfg = json.loads(cfg_path.read_text())["config"]
    sp = spm.SentencePieceProcessor(model_file=str(run_dir / "tokenizer.model"))
    if checkpoint:  # a named checkpoint is verified here; the newest valid one was verified when it was chosen
        ck = Path(checkpoint)
        CheckpointManager.verify(ck)
    else:
        ck = newest_valid_checkpoint(run_dir)
    model_cfg = ModelConfig(**cfg["model"])
    model = build_model(model_cfg, sp.get_piece_size(), cfg["data"]["bptt"])
    load_model_weights(model, ck)
    return model.to(device).eval(), sp, ck


@torch.no_grad()
def sample(model: LanguageModel, sp, prompt: str, n_tokens: int, temperature: float = 1.0, top_k: int = 0,
           generator: Optional[torch.Generator] = None, device="cpu") -> str:
    """Continue ``prompt`` by ``n_tokens`` sampled tokens (temperature, optional top-k); returns prompt + text."""
    ids = [sp.eos_id()] + sp.encode(prompt)
    x = torch.tensor(ids, dtype=torch.long, device=device).unsqueeze(1)
    logits, state = model(x)
    out = []
    for _ in range(n_tokens):
        last = logits[-1, 0].float() / max(temperature, 1e-6)
        if top_k > 0:
            kth = torch.topk(last, min(top_k, last.numel())).values[-1]
            last = last.masked_fill(last < kth, float("-inf"))
        nxt = int(torch.multinomial(torch.softmax(last, -1), 1, generator=generator))
        out.append(nxt)
        logits, state = model(torch.tensor([[nxt]], device=device), state)
    # the end-of-sequence id stands for a line break in this project's token streams
    lines, cur = [], []
    for t in ids[1:] + out:
        if t == sp.eos_id():
            lines.append(sp.decode(cur))
            cur = []
        else:
            cur.append(t)
    lines.append(sp.decode(cur))
    return "\n".join(lines)
