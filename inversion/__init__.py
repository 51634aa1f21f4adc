"""gradleak: gradient leakage in federated learning.

The Python API (see :mod:`inversion.api`)::

    import inversion as gl
    update, private = gl.load_update("update.pt"), gl.load_private("private.pt")
    model = gl.model_from_update(update)
    result = gl.invert(update, model, labels="ilrg", preset="default")
    print(gl.score(result, private)["mean"])

What the server receives is a :class:`SharedUpdate` (public); what only the client knows is a
:class:`PrivateBatch`, used only by :func:`score`.
"""

# isort: off
from inversion.utils import openmp as _openmp  # noqa: F401  (first: before torch loads OpenMP, idle threads sleep)
from inversion import _torchvision_compat  # noqa: F401  (before any torchvision/lpips import)

# isort: on
from inversion.api import Reconstruction, invert, load_private, load_update, score, simulate
from inversion.attack import AttackSettings
from inversion.config.presets import Preset, load_preset, preset_names
from inversion.fl import PrivateBatch, SharedUpdate, UpdateMeta
from inversion.fl.server import model_from_update
from inversion.restore import restore_from_update
from inversion.restore.auxiliary import AuxiliaryData, draw_auxiliary

__all__ = [
    "AttackSettings",
    "AuxiliaryData",
    "Preset",
    "PrivateBatch",
    "Reconstruction",
    "SharedUpdate",
    "UpdateMeta",
    "draw_auxiliary",
    "invert",
    "load_preset",
    "load_private",
    "load_update",
    "model_from_update",
    "preset_names",
    "restore_from_update",
    "score",
    "simulate",
]
