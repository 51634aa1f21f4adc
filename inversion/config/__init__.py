"""Configuration: YAML config groups composed and checked against typed schemas, once, at the command line.

- :mod:`.compose`: loading (schema defaults, group files, overrides), resolving into typed objects, saving;
- :mod:`.presets`: named attack presets (``configs/invert/``).
"""

from inversion.config.compose import *  # noqa: F403
from inversion.config.compose import __all__ as _compose_all

__all__ = list(_compose_all)
