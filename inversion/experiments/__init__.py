"""The experiment drivers, one per command and named after it: :mod:`.invert`, :mod:`.ablate`,
:mod:`.restore_labels`, :mod:`.share_update`, :mod:`.train` (and :mod:`.train_sweep` for ``--sweep``),
:mod:`.federate`, :mod:`.demo`. Library code never imports them."""
