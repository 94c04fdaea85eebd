"""Train a gate variant on the copy or adding task (Gu et al. 2020's synthetic long-memory tasks).

    accelerate launch train/synthetic.py --preset copy --variant UR           # lag 480, the paper's setup
    python train/synthetic.py --preset adding --variant lstm --length 1000
    python train/synthetic.py --preset copy-tiny --variant U- --run.dir runs/copy-U   # CPU-sized
    python train/synthetic.py --help                                           # every option

Everything but the command line lives in ``urlstm_triton.tasks.synthetic_job``.
"""
from urlstm_triton.tasks.synthetic_job import main
from urlstm_triton.training import run_main

if __name__ == "__main__":
    run_main(main)
