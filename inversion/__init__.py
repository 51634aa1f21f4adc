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
from inversion.utils import openmp as _openmp  # noqa: F401  (before torch loads OpenMP: idle threads sleep)
from inversion import _torchvision_compat  # noqa: F401  (must run before any torchvision/lpips import)

from inversion.api import Reconstruction, invert, load_private, load_update, score, simulate  # noqa: E402
from inversion.attack import AttackSettings  # noqa: E402
from inversion.restore.auxiliary import AuxiliaryData, draw_auxiliary  # noqa: E402
from inversion.fl import PrivateBatch, SharedUpdate, UpdateMeta  # noqa: E402
from inversion.fl.server import model_from_update  # noqa: E402
from inversion.config.presets import Preset, load_preset, preset_names  # noqa: E402
from inversion.restore import restore_from_update  # noqa: E402

__all__ = [
    "AttackSettings", "AuxiliaryData", "Preset", "PrivateBatch", "Reconstruction", "SharedUpdate", "UpdateMeta",
    "draw_auxiliary", "invert", "load_preset", "load_private", "load_update", "model_from_update", "preset_names",
    "restore_from_update", "score", "simulate",
]
