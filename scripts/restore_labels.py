"""Benchmark instance-wise label restoration (iLRG and baselines) over a sweep of settings.

See ``inversion/cli/restore.py`` (also installed as the ``gradleak-restore`` command).
"""
import inversion  # noqa: F401  (first: the torchvision compatibility shim)

from inversion.cli.restore import run

if __name__ == "__main__":
    run()
