"""The ``share_update`` command's driver: one simulated FL client, its shared update and its private batch saved
apart in a run folder (``update.pt``, ``private.pt``, ``config.yaml``, ``batch.png``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from inversion.config import ShareConfig
from inversion.fl.simulate import ClientRun, simulate_client
from inversion.utils.plotting import save_image_rows
from inversion.utils.records import write_yaml_record
from inversion.utils.rundir import check_out, run_folder

__all__ = ["OUTPUTS", "SharedFiles", "run_share_update"]

OUTPUTS = ("update.pt", "private.pt", "config.yaml", "batch.png")
"""The files a run writes into its ``out`` folder."""


@dataclass(frozen=True)
class SharedFiles:
    """What :func:`run_share_update` wrote, and the client run it came from."""

    run: ClientRun
    update: Path
    private: Path
    config: Path
    picture: Path


def run_share_update(cfg: ShareConfig) -> SharedFiles:
    """Simulate the client of a resolved :class:`~inversion.config.ShareConfig` and write its files into
    ``cfg.out``: the update (public) and the private batch (for scoring only), the config and a picture."""
    check_out(cfg.out)
    run = simulate_client(cfg)
    with run_folder(cfg.out, OUTPUTS) as out:
        update_path = run.update.save(out / "update.pt")
        private_path = run.private.save(out / "private.pt")
        write_yaml_record(cfg, out / "config.yaml")
        picture = save_image_rows(
            [run.source.spec.denormalize(run.batch.images)],
            out / "batch.png",
            row_names=["private batch"],
            captions=[[str(int(y)) for y in run.batch.labels]],
            title=f"{cfg.data.name} client batch, K={run.update.batch_size} (true labels above each image)",
        )
    return SharedFiles(run, update_path, private_path, out / "config.yaml", picture)
