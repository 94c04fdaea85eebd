"""Train a UR-LSTM language model: ``accelerate launch train/lm.py [--preset quickstart|wt103] [--key value ...]``.

Also runs as ``python train/lm.py ...``. ``--help`` lists every option. The work is in ``urlstm_triton.lm``.
"""
# urlstm_triton.cli.lm is also the console script urlstm-lm: it first checks that the train extra is
# installed (one line saying what to install, exit status 2, if not), then runs the job.
from urlstm_triton.cli import lm

if __name__ == "__main__":
    lm()
