"""Simulate one FL client: sample a real private batch, compute the FedSGD update it shares, save both apart.

See ``inversion/cli/share_update.py`` (also installed as the ``gradleak-share-update`` command).
"""

# isort: off
import inversion  # noqa: F401  (first: the OpenMP wait policy and the torchvision shim)

# isort: on
from inversion.cli.share_update import run

if __name__ == "__main__":
    run()
