"""Train a gate variant on pixel-by-pixel image classification: sequential MNIST, permuted MNIST (one fixed
permutation), sequential CIFAR-10.

    accelerate launch train/vision.py --preset smnist --variant UR          # hub data, the paper's setup
    python train/vision.py --preset pmnist-5k --variant lstm                # data/mnist-5k, 4000/1000
    python train/vision.py --preset smnist --data mnist.npz                 # a local file (.csv.gz, .npz, .parquet)
    python train/vision.py --help                                           # every option

Everything but the command line lives in ``urlstm_triton.tasks.vision_job``.
"""
# urlstm_triton.cli.vision is also the console script urlstm-vision: it first checks that the train extra is
# installed (one line saying what to install, exit status 2, if not), then runs the job.
from urlstm_triton.cli import vision

if __name__ == "__main__":
    vision()
