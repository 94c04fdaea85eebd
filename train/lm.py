"""Train a UR-LSTM language model: ``accelerate launch train/lm.py [--preset quickstart|wt103] [--key value ...]``.

Also runs as ``python train/lm.py ...``. ``--help`` lists every option. The work is in ``urlstm_triton.lm``.
"""
from urlstm_triton.lm.job import cli

if __name__ == "__main__":
    cli()
