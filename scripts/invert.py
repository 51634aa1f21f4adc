"""Gradient inversion: reconstruct a client's private batch from its shared update, and score it.

See ``inversion/cli/invert.py`` (also installed as the ``gradleak-invert`` command).
"""

# isort: off
import inversion  # noqa: F401  (first: the OpenMP wait policy and the torchvision shim)

# isort: on
from inversion.cli.invert import run

if __name__ == "__main__":
    run()
