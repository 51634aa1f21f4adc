"""Run a real Flower federation (FedSGD under FedAvg) whose honest-but-curious server captures every update.

See ``inversion/cli/federate.py`` (also installed as the ``gradleak-federate`` command).
"""

# isort: off
import inversion  # noqa: F401  (first: the OpenMP wait policy and the torchvision shim)

# isort: on
from inversion.cli.federate import run

if __name__ == "__main__":
    run()
