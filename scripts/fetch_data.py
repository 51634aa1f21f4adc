"""Make sure the registry sample packs of some datasets are in the data cache.

See ``inversion/cli/fetch_data.py`` (also installed as the ``gradleak-fetch-data`` command).
"""

# isort: off
import inversion  # noqa: F401  (first: the OpenMP wait policy and the torchvision shim)

# isort: on
from inversion.cli.fetch_data import run

if __name__ == "__main__":
    run()
