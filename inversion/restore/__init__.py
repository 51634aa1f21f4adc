"""Stage one on the server: label restoration applied to a received update, with the server's auxiliary data.

- :mod:`.from_update`: :func:`restore_from_update` (any :mod:`label_restore` method, on a :class:`SharedUpdate`);
- :mod:`.auxiliary`: the server's auxiliary images (:class:`AuxiliaryData`) and the ``aux`` method's simulation.
"""

from inversion.restore.auxiliary import AuxiliaryData, draw_auxiliary
from inversion.restore.from_update import restore_from_update

__all__ = ["AuxiliaryData", "draw_auxiliary", "restore_from_update"]
