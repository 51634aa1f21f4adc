"""Attack presets: the shipped inversion settings (``configs/invert/*.yaml``) as typed objects.

    >>> preset = load_preset("mnist_fcn3")   # the iLRG paper's MNIST setting
    >>> preset.settings.max_steps, preset.priors["tv"], preset.dataset
    (8000, 0.0001, 'mnist')

A preset is read from the same file ``scripts/invert.py --config configs/invert/<name>.yaml`` runs,
so the Python API and the command line cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from inversion.attack.settings import AttackSettings
from inversion.config.compose import CONFIG_DIR, load_config
from inversion.config.schemas import ConfigError, InvertConfig
from inversion.data.specs import SPECS, DatasetSpec

__all__ = ["PRESET_DIR", "Preset", "load_preset", "preset_names"]

PRESET_DIR = CONFIG_DIR / "invert"


@dataclass(frozen=True)
class Preset:
    """A shipped attack setting.

    Attributes:
        name: the config's name (``configs/invert/<name>.yaml``).
        settings: the attack settings.
        priors: ``{name: weight}`` of the image priors (zero weights left out).
        dataset: the dataset the setting is for; its normalisation gives the pixel box when an
            update does not carry its own.
        batch_size: the client batch size of the setting (what its simulated client uses).
    """

    name: str
    settings: AttackSettings
    priors: dict[str, float]
    dataset: str
    batch_size: int

    @property
    def spec(self) -> DatasetSpec | None:
        """The dataset's spec (normalisation, input shape), None for a ``folder`` dataset."""
        return SPECS.get(self.dataset)


def preset_names() -> list[str]:
    """Names of the shipped presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(name: str | Path) -> Preset:
    """A preset by name (see :func:`preset_names`), or from an inversion config file's path.

    Raises:
        ConfigError: no such preset, or an invalid file.
    """
    path = Path(name) if str(name).endswith((".yaml", ".yml")) else PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"no attack preset {str(name)!r}; presets: {', '.join(preset_names())}")
    cfg = load_config(InvertConfig, path)
    priors = {name: weight for name, weight in cfg.priors.items() if weight}
    return Preset(path.stem, cfg.attack, priors, str(cfg.data.name), cfg.client.batch_size)
