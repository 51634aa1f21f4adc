"""Simulate one FL client: sample a real private batch, compute the FedSGD update it shares, save both apart.

    python scripts/share_update.py [--config configs/share_update.yaml] [key=value | group=name ...]

Writes into ``out`` (default runs/share): ``update.pt`` (what the server receives: gradients, K and
public metadata, loadable with ``SharedUpdate.load``), ``private.pt`` (what only the client knows:
images, labels and how they were drawn, for scoring only), ``config.yaml`` (the resolved config) and
``batch.png`` (the private batch). Attack it with ``scripts/invert.py --update OUT/update.pt
[--private OUT/private.pt]``.
"""

from inversion.cli import config_parser, run_cli
from inversion.config import ShareConfig, load_config
from inversion.experiments.share_update import run_share_update


def main() -> None:
    args = config_parser(__doc__.splitlines()[0], "configs/share_update.yaml").parse_intermixed_args()
    files = run_share_update(load_config(ShareConfig, args.config, args.overrides))
    run = files.run
    parameters = sum(p.numel() for p in run.model.parameters())
    print(run.update.summary())
    print(f"model: {run.model.config['name']} ({parameters:,} parameters); data: {run.batch.source}")
    print(
        f"saved {files.update} (public), {files.private} (private: for scoring only), {files.config} "
        f"and {files.picture}"
    )
    print(f"attack it: python scripts/invert.py --update {files.update} --private {files.private}")


def run() -> None:
    """Console-script entry point: errors become one line and exit code 2."""
    run_cli(main)
