"""Simulate one FL client: sample a real private batch, compute the FedSGD update it shares, save both apart.

    python scripts/share_update.py [--config configs/share.yaml] [key=value | group=name ...]

Writes into ``out`` (default runs/share): ``update.pt`` (what the server receives: gradients, K and
public metadata, loadable with ``SharedUpdate.load``), ``private.pt`` (what only the client knows:
images, labels and how they were drawn, for scoring only), ``config.yaml`` (the resolved config) and
``batch.png`` (the private batch). Attack it with ``scripts/invert.py --update OUT/update.pt
[--private OUT/private.pt]``.
"""
from . import config_parser, run_cli
from ..config import ShareConfig, load_config, save_config
from ..experiment import simulate_client
from ..rundir import check_out, run_folder
from ..visualize import save_image_rows


OUTPUTS = ("update.pt", "private.pt", "config.yaml", "batch.png")


def main() -> None:
    args = config_parser(__doc__.splitlines()[0], "configs/share.yaml").parse_intermixed_args()
    cfg = load_config(ShareConfig, args.config, args.overrides)
    check_out(cfg.out)
    run = simulate_client(cfg)
    with run_folder(cfg.out, OUTPUTS) as out:
        update_path = run.update.save(out / "update.pt")
        private_path = run.private.save(out / "private.pt")
        save_config(cfg, out / "config.yaml")
        picture = save_image_rows(
            [run.source.spec.denormalize(run.batch.images)], out / "batch.png", row_names=["private batch"],
            captions=[[str(int(y)) for y in run.batch.labels]],
            title=f"{cfg.data.name} client batch, K={run.update.batch_size} (true labels above each image)",
        )
    parameters = sum(p.numel() for p in run.model.parameters())
    print(run.update.summary())
    print(f"model: {run.model.config['name']} ({parameters:,} parameters); data: {run.batch.source}")
    print(f"saved {update_path} (public), {private_path} (private: for scoring only), {out / 'config.yaml'} "
          f"and {picture}")
    print(f"attack it: python scripts/invert.py --update {update_path} --private {private_path}")


def run() -> None:
    """Console-script entry point: errors become one line and exit code 2."""
    run_cli(main)
