"""Known-versus-unknown-label ablation: the same shared updates through every label mode.

See ``inversion/cli/ablate.py`` (also installed as the ``gradleak-ablate`` command).
"""

# isort: off
import inversion  # noqa: F401  (first: the OpenMP wait policy and the torchvision shim)

# isort: on
from inversion.cli.ablate import run

if __name__ == "__main__":
    run()
