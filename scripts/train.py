"""Train a zoo model on real images: checkpoints at chosen epochs, a log of train and held-out accuracy.

See ``inversion/cli/train.py`` (also installed as the ``gradleak-train`` command).
"""

# isort: off
import inversion  # noqa: F401  (first: the OpenMP wait policy and the torchvision shim)

# isort: on
from inversion.cli.train import run

if __name__ == "__main__":
    run()
