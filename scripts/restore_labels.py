"""Benchmark instance-wise label restoration (iLRG and baselines) over a sweep of settings.

See ``inversion/cli/restore_labels.py`` (also installed as the ``gradleak-restore-labels`` command).
"""
import inversion  # noqa: F401  (first: the torchvision compatibility shim)

from inversion.cli.restore_labels import run

if __name__ == "__main__":
    run()
