"""Known-versus-unknown-label ablation: the same shared updates through every label mode.

See ``inversion/cli/ablate.py`` (also installed as the ``gradleak-ablate`` command).
"""
import inversion  # noqa: F401  (first: the torchvision compatibility shim)

from inversion.cli.ablate import run

if __name__ == "__main__":
    run()
