"""Stage one on the server: label restoration applied to a received update, with the server's auxiliary data.

- :mod:`.from_update`: :func:`restore_from_update` (any registered :mod:`label_restore` method, on a
  :class:`SharedUpdate`, handed what the method needs) and :func:`needs_auxiliary` (whether a method reads
  ``aux=``);
- :mod:`.auxiliary`: the server's auxiliary images (:class:`AuxiliaryData`) and the simulation of the methods that
  read them (``aux``);
- :mod:`.disaggregation`: the label method ``disaggregation`` (the labels of the samples recovered exactly from
  the linear layers' gradients, a final-layer method for the rest), registered here with ``needs="update"``, so
  :func:`label_restore.available_methods` lists it once :mod:`inversion` is imported; and ``disaggregation_aux``,
  which restores the samples left with ``aux`` (it reads the server's auxiliary data).
"""

from inversion.restore.auxiliary import AuxiliaryData, draw_auxiliary
from inversion.restore.from_update import needs_auxiliary, restore_from_update

# isort: split
from inversion.restore.disaggregation import (  # after restore_from_update: it imports inversion.attack
    disaggregation,
    disaggregation_aux,
)
from label_restore import register_method

register_method("disaggregation", disaggregation, needs="update")
register_method("disaggregation_aux", disaggregation_aux, needs="update")

__all__ = [
    "AuxiliaryData",
    "disaggregation",
    "disaggregation_aux",
    "draw_auxiliary",
    "needs_auxiliary",
    "restore_from_update",
]
