"""Train a zoo model on real images: checkpoints at chosen epochs, a log of train and held-out accuracy.

See ``inversion/cli/train.py`` (also installed as the ``gradleak-train`` command).
"""
import inversion  # noqa: F401  (first: the torchvision compatibility shim)

from inversion.cli.train import run

if __name__ == "__main__":
    run()
