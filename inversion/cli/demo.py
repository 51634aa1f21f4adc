"""Teaching demo: one self-contained HTML page walking through one gradient-leakage attack.

    python scripts/demo.py [--out runs/demo] [--screenshot] [key=value ...]

Runs the default MNIST attack twice on the same client batch (iLRG-restored labels, and unknown labels)
and writes OUT/demo.html (every picture embedded; opens offline in any browser). --screenshot also
renders the page with headless Chromium (Debian's `chromium` package) to OUT/demo.png.
"""

import argparse
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from inversion.cli import run_cli
from inversion.config import CONFIG_DIR, InvertConfig, load_config
from inversion.experiments.demo import run_demo
from inversion.utils.errors import MissingFileError

DEMO_OVERRIDES = ("attack.max_steps=1000", "attack.checkpoint_every=0", "attack.snapshot_every=0")
"""The demo's changes to ``configs/invert/default.yaml``: 1000 steps, no checkpoints, snapshots spread over the run
(:data:`inversion.experiments.demo.SNAPSHOTS`); the user's overrides come after them."""


def demo_config(overrides: Sequence[str] = ()) -> InvertConfig:
    """The demo's resolved config: the default attack with :data:`DEMO_OVERRIDES`, then ``overrides``."""
    return load_config(InvertConfig, CONFIG_DIR / "invert" / "default.yaml", [*DEMO_OVERRIDES, *overrides])


def screenshot(page: Path, png: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        raise MissingFileError("--screenshot needs Chromium: apt-get install chromium (Debian), then run again")
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={png.parent / '.chromium'}",
            "--window-size=1200,3700",
            f"--screenshot={png}",
            page.resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--screenshot", action="store_true", help="also render the page to OUT/demo.png")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_intermixed_args()
    page = run_demo(args.out, demo_config(args.overrides))
    print(f"wrote {page} (self-contained; open it in any browser)")
    if args.screenshot:
        png = Path(args.out) / "demo.png"
        screenshot(page, png)
        print(f"wrote {png}")


def run() -> None:
    """Console-script entry point: errors become one line and exit code 2."""
    run_cli(main)
