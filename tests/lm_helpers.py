"""Shared helpers for the LM trainer and reliability tests: a generated corpus, tiny-run arguments, runners
(in-process and as a subprocess) and readers of what a run leaves behind."""
from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
LM_SCRIPT = ROOT / "train" / "lm.py"


def make_corpus(directory: Path, seed: int = 0, lines=(400, 40, 40)) -> dict:
    """train/valid/test .txt files of random lines over 60 made-up words (some lines blank)."""
    directory.mkdir(parents=True, exist_ok=True)
    r = random.Random(seed)
    words = ["".join(r.choice("abcdefghij") for _ in range(r.randint(2, 6))) for _ in range(60)]
    paths = {}
    for split, n in zip(("train", "valid", "test"), lines):
        p = directory / f"{split}.txt"
        p.write_text("".join(" ".join(r.choice(words) for _ in range(r.randint(0, 12))) + "\n" for _ in range(n)))
        paths[split] = p
    return paths


def steps_args(steps: int):
    """``args(tmp_path, corpus, run_name, *extra)``: a tiny run of ``steps`` steps in ``tmp_path/run_name``."""
    def args(tmp_path, corpus, run, *extra):
        return tiny_args(tmp_path / run, tmp_path / "cache", corpus, "--train.steps", str(steps), *extra)
    return args


def tiny_args(run_dir: Path, cache_dir: Path, corpus: dict, *extra: str) -> list:
    """A model small enough that a step takes milliseconds on a CPU."""
    return [
        "--run.dir", str(run_dir), "--data.cache_dir", str(cache_dir),
        "--data.source", "files", "--data.files",
        f"train={corpus['train']}", f"valid={corpus['valid']}", f"test={corpus['test']}",
        "--tokenizer.vocab_size", "300", "--model.embed", "16", "--model.hidden", "24", "--model.backend",
        "reference", "--data.batch_size", "4", "--data.bptt", "8", "--data.eval_batch_size", "2",
        "--train.steps", "8", "--train.save_every", "2", "--train.keep_checkpoints", "10", "--run.progress",
        "false", "--run.tensorboard", "false", "--run.log_every", "100", "--run.threads", "1", *extra,
    ]


def run_inproc(argv):
    from urlstm_triton.lm.job import main

    return main(list(argv))


def run_cli(argv, env_extra=None, timeout=120, launcher=None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("URLSTM_FAULTS", None)
    env.update(env_extra or {})
    cmd = (launcher or [sys.executable]) + [str(LM_SCRIPT)] + list(argv)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def ddp_launcher(processes: int = 2) -> list:
    """``accelerate launch`` of ``processes`` CPU processes (gloo) on a free port, so that concurrent test sessions
    do not collide; the script's arguments need ``--run.cpu true``."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
            str(port)]


def checkpoints(run_dir: Path) -> list:
    d = Path(run_dir) / "checkpoints"
    return sorted(p for p in d.iterdir() if p.name.startswith("step-")) if d.is_dir() else []


def load_ckpt(path: Path) -> dict:
    """What a checkpoint (accelerator.save_state + per-rank files) holds, by role."""
    from safetensors.torch import load_file

    load = lambda name: torch.load(path / name, weights_only=False)  # noqa: E731
    model = {k: v.clone() for k, v in load_file(path / "model.safetensors").items()}  # not a view of the file
    return {"model": model, "optimizer": load("optimizer.bin"),
            "scheduler": load("scheduler.bin"), "guard": load("custom_checkpoint_0.pkl"),
            "trainer": load("custom_checkpoint_1.pkl"), "rng": load("random_states_0.pkl"),
            "rank000": load("rank000.pt")}


def train_curve(run_dir: Path) -> list:
    from urlstm_triton.training import read_metrics  # non-finite values are null + a flag on disk, floats here

    rows = read_metrics(Path(run_dir) / "metrics.jsonl")
    return [(r["step"], r["loss"], r["grad_norm"], r["lr"], r["skipped"]) for r in rows if "eval" not in r]


def assert_same_state(a: dict, b: dict) -> None:
    """Bitwise equality of model parameters, optimiser state, schedule and carried state."""
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"parameter {k} differs"
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in sa[i]:
            assert torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k])), f"optimizer {i}.{k} differs"
    assert a["scheduler"] == b["scheduler"]
    assert a["trainer"]["step"] == b["trainer"]["step"] and a["guard"] == b["guard"]
    ca, cb = a["rank000"]["objective"]["carry"], b["rank000"]["objective"]["carry"]
    for x, y in zip(ca, cb):
        assert (x is None) == (y is None)
        if x is not None:
            assert all(torch.equal(u, v) for u, v in zip(x, y)), "carried state differs"
    assert torch.equal(a["rng"]["torch_manual_seed"], b["rng"]["torch_manual_seed"]), "torch RNG differs"
    assert a["rng"]["random_state"] == b["rng"]["random_state"], "python RNG differs"
