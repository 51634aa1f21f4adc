"""Teaching demo: one self-contained HTML page walking through one gradient-leakage attack.

See ``inversion/cli/demo.py`` (also installed as the ``gradleak-demo`` command).
"""

# isort: off
import inversion  # noqa: F401  (first: the OpenMP wait policy and the torchvision shim)

# isort: on
from inversion.cli.demo import run

if __name__ == "__main__":
    run()
