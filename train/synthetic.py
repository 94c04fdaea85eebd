"""Train a gate variant on the copy or adding task (Gu et al. 2020's synthetic long-memory tasks).

    accelerate launch train/synthetic.py --preset copy --variant UR           # lag 480, the paper's setup
    python train/synthetic.py --preset adding --variant lstm --length 1000
    python train/synthetic.py --preset copy-tiny --variant U- --run.dir runs/copy-U   # CPU-sized
    python train/synthetic.py --help                                           # every option

Everything but the command line lives in ``urlstm_triton.tasks.synthetic_job``.
"""
# urlstm_triton.cli.synthetic is also the console script urlstm-synthetic: it first checks that the train extra is
# installed (one line saying what to install, exit status 2, if not), then runs the job.
from urlstm_triton.cli import synthetic

if __name__ == "__main__":
    synthetic()
