"""Stage one on the server: label restoration applied to a received update, with the server's auxiliary data.

- :mod:`.from_update`: :func:`restore_from_update` (any registered :mod:`label_restore` method, on a
  :class:`SharedUpdate`, handed what the method needs) and :func:`needs_auxiliary` (whether a method reads
  ``aux=``);
- :mod:`.auxiliary`: the server's auxiliary images (:class:`AuxiliaryData`) and the simulation of the methods that
  read them (``aux``).
"""

from inversion.restore.auxiliary import AuxiliaryData, draw_auxiliary
from inversion.restore.from_update import needs_auxiliary, restore_from_update

__all__ = ["AuxiliaryData", "draw_auxiliary", "needs_auxiliary", "restore_from_update"]
