"""Configuration: YAML config groups composed, then resolved once (at the command line, or by the Python API) into
typed schema objects that everything downstream receives.

- :mod:`.schemas`: the dataclass schemas of every section and command, with their checks, and :class:`ConfigError`;
- :mod:`.compose`: loading (schema defaults, group files, overrides) into typed objects, and writing them down
  (:func:`to_dict`, :func:`config_digest`, :func:`save_config`);
- :mod:`.presets`: named attack presets (``configs/invert/``).
"""

from inversion.config.compose import *  # noqa: F403
from inversion.config.compose import __all__ as _compose_all
from inversion.config.schemas import *  # noqa: F403
from inversion.config.schemas import __all__ as _schemas_all

__all__ = [*_schemas_all, *_compose_all]
