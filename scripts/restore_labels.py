"""Benchmark instance-wise label restoration (iLRG and baselines) over a sweep of settings.

See ``inversion/cli/restore_labels.py`` (also installed as the ``gradleak-restore-labels`` command).
"""

# isort: off
import inversion  # noqa: F401  (first: the OpenMP wait policy and the torchvision shim)

# isort: on
from inversion.cli.restore_labels import run

if __name__ == "__main__":
    run()
