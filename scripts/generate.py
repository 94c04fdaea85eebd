"""Sample text from a language model trained with ``train/lm.py``.

    python scripts/generate.py --run runs/lm-quickstart --prompt "The for statement" --tokens 80
"""
import argparse
import sys

import torch

from urlstm_triton.lm.sampling import load_run_model, sample
from urlstm_triton.training import DataError


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="runs/lm-quickstart", help="run directory of train/lm.py")
    p.add_argument("--checkpoint", default=None, help="checkpoint directory (default: the newest complete one)")
    p.add_argument("--prompt", default="", help="text to continue")
    p.add_argument("--tokens", type=int, default=100, help="tokens to sample")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top_k", type=int, default=0, help="sample among the k most likely tokens (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    if a.tokens < 1:
        p.error("--tokens must be >= 1")
    try:
        model, sp, ck = load_run_model(a.run, a.checkpoint, a.device)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    g = torch.Generator(device=a.device).manual_seed(a.seed)
    text = sample(model, sp, a.prompt, a.tokens, a.temperature, a.top_k, g, a.device)
    print(f"# {ck}", file=sys.stderr)
    print(text)


if __name__ == "__main__":
    main()
