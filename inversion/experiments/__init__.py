"""The experiment drivers, one per command and named after it: :mod:`.invert`, :mod:`.ablate`,
:mod:`.restore_labels`, :mod:`.share_update`, :mod:`.train` (and :mod:`.train_sweep` for ``--sweep``),
:mod:`.federate`, :mod:`.demo`. Each takes its command's resolved config (the typed objects of
:mod:`inversion.config.schemas`, built by :func:`inversion.config.load_config`); a sweep composes its runs'
configs from the files it names before any run. Library code never imports them."""
