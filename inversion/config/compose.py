"""Loading a config: schema defaults, config groups and overrides, resolved once into typed objects.

A run's configuration is a dataclass schema (:mod:`inversion.config.schemas`, e.g. :class:`ShareConfig`) whose
sections (``data``, ``model``, ``client``) are *config groups*: each has YAML files under
``configs/<group>/<name>.yaml``. Sources merge in this order:

1. the schema's defaults;
2. the group files named in the top-level YAML's ``defaults:`` mapping,
   e.g. ``defaults: {data: mnist, model: lenet5, client: default}``;
3. the rest of the top-level YAML;
4. command-line overrides, in order: ``group=name`` replaces that whole group by
   the schema default plus ``configs/<group>/<name>.yaml``; ``a.b=value`` sets a key.

:func:`load_config` then resolves the merged config once (:func:`resolve`) into the schema's dataclasses, which
check their values; everything downstream receives those typed objects. Every unknown key, wrong type, unknown name
(dataset, model, activation, sampler, ...) or value a schema refuses raises :class:`ConfigError` naming the key.
:func:`to_dict`, :func:`config_digest` and :func:`save_config` write a resolved config down as a record (they are
:mod:`inversion.utils.records`, which the code below the command line uses directly).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf import errors as oc_errors

from inversion.config.schemas import ConfigError
from inversion.utils.errors import InputError
from inversion.utils.records import as_record, record_digest, write_yaml_record

__all__ = ["CONFIG_DIR", "config_digest", "config_path", "load_config", "resolve", "save_config", "to_dict"]

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
"""The shipped configs: package data of :mod:`inversion` (in a checkout, a link to the top-level ``configs/``)."""

Schema = TypeVar("Schema")


def config_path(path: str | Path) -> Path:
    """``path`` as given if it exists (or is absolute); else a ``configs/...`` path is looked up among the
    shipped configs, so ``--config configs/invert/mnist_fcn3.yaml`` works from any directory."""
    candidate = Path(path)
    if candidate.exists() or candidate.is_absolute() or not candidate.parts or candidate.parts[0] != "configs":
        return candidate
    shipped = CONFIG_DIR.joinpath(*candidate.parts[1:])
    return shipped if shipped.exists() else candidate


def _explain(err: Exception, origin: str) -> ConfigError:
    """A ConfigError from an omegaconf error: omegaconf's sentence, where, and what is allowed."""
    message = str(err).split("\n")[0].strip()
    key = getattr(err, "full_key", None) or None
    where = f" (key '{key}'" + (f" in {origin})" if origin else ")") if key else (f" (in {origin})" if origin else "")
    hint = ""
    node = getattr(err, "object_type", None)
    if isinstance(err, (oc_errors.ConfigKeyError, oc_errors.ConfigAttributeError)) and dataclasses.is_dataclass(node):
        hint = "; valid keys here: " + ", ".join(f.name for f in dataclasses.fields(node))
    explained = ConfigError(f"{message}{where}{hint}")
    explained.key = key  # the message already names it, in omegaconf's words
    return explained


def _group_file(group: str, name: str, config_dir: Path) -> Path:
    path = config_dir / group / f"{name}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in (config_dir / group).glob("*.yaml"))
        raise ConfigError(
            f"no config '{name}' in group '{group}' ({path} does not exist); "
            f"available: {', '.join(available) or 'none'}"
        )
    return path


def _merge(base: DictConfig, update: Any, origin: str) -> DictConfig:
    try:
        return cast(DictConfig, OmegaConf.merge(base, update))  # a mapping merged into a mapping
    except oc_errors.OmegaConfBaseException as err:
        raise _explain(err, origin) from None


def _load_yaml(path: Path) -> DictConfig:
    try:
        loaded = OmegaConf.load(path)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except Exception as err:  # yaml syntax errors come in several types
        raise ConfigError(f"cannot parse config file {path}: {err}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return loaded


def _select_group(cfg: DictConfig, schema: type, group: str, name: str, config_dir: Path) -> DictConfig:
    factory = {f.name: f.default_factory for f in dataclasses.fields(schema)}[group]
    assert callable(factory)  # a group is a section with a default factory (see _groups)
    default = OmegaConf.structured(factory())
    path = _group_file(group, name, config_dir)
    chosen = _merge(default, _load_yaml(path), str(path))
    cfg[group] = chosen
    return cfg


def _groups(schema: type) -> set[str]:
    """Names of the schema's sections that are config groups (dataclass-valued fields)."""
    return {f.name for f in dataclasses.fields(schema) if dataclasses.is_dataclass(f.default_factory)}


def load_config(
    schema: type[Schema],
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    config_dir: str | Path = CONFIG_DIR,
    base: Any = None,
) -> Schema:
    """Load a config: a schema, an optional YAML file and overrides, resolved into the schema's typed objects.

    Args:
        schema: the dataclass schema, e.g. :class:`ShareConfig`.
        path: top-level YAML file (may hold a ``defaults:`` mapping of group names).
        overrides: ``group=name`` and ``dotted.key=value`` strings, applied in order.
        config_dir: folder holding the group folders (default: the repo's ``configs/``).
        base: start from this config instead of the schema's defaults: a resolved config or its :func:`to_dict`
            record (e.g. a sweep's run, handed to its worker as plain data).

    Returns:
        an instance of ``schema``, every section a dataclass instance, checked by their ``__post_init__``.

    Raises:
        ConfigError: an unknown key, wrong type, unknown name, missing file or refused value, naming the key.
    """
    config_dir = Path(config_dir)
    groups = _groups(schema)
    cfg = OmegaConf.structured(schema)
    if base is not None:
        cfg = _merge(cfg, base, "base config")
    if path is not None:
        path = config_path(path)
        body = _load_yaml(path)
        defaults = body.pop("defaults") if "defaults" in body else OmegaConf.create({})
        if not isinstance(defaults, DictConfig):
            raise ConfigError(f"'defaults' in {path} must map groups to names, e.g. defaults: {{data: mnist}}")
        for key, name in defaults.items():
            group = str(key)
            if group not in groups:
                raise ConfigError(f"'defaults' in {path} names group '{group}'; groups: {', '.join(sorted(groups))}")
            cfg = _select_group(cfg, schema, group, str(name), config_dir)
        cfg = _merge(cfg, body, str(path))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. client.batch_size=16) or group=name")
        if key in groups:
            cfg = _select_group(cfg, schema, key, value, config_dir)
        else:
            cfg = _merge(cfg, OmegaConf.from_dotlist([item]), "command line")
    return resolve(cfg)


def resolve(cfg: DictConfig) -> Any:
    """A merged config as typed objects: its schema's dataclass, each section built (and checked by its
    ``__post_init__``) first, then the whole (whose ``__post_init__`` checks what needs several sections).

    Raises:
        ConfigError: a value the dataclasses refuse (e.g. ``attack.max_steps=0``), naming its key: a section's
            own error keyed within the section, or the section itself for a plain ValueError (whose message names
            the setting).
    """
    schema: Any = OmegaConf.get_type(cfg)
    values = {}
    for f in dataclasses.fields(schema):
        node = cfg[f.name]
        if not isinstance(node, (DictConfig, ListConfig)):
            values[f.name] = node
            continue
        try:
            values[f.name] = OmegaConf.to_object(node)
        except ConfigError as err:
            raise err.within(f.name) from None
        except InputError as err:  # a settings object's own check (e.g. AttackSettings), keyed when it names one
            raise ConfigError(err.problem, err.key).within(f.name) from None
        except (ValueError, oc_errors.OmegaConfBaseException) as err:
            raise ConfigError(str(err).splitlines()[0], f.name) from None
    try:
        return schema(**values)
    except ConfigError:
        raise
    except ValueError as err:
        raise ConfigError(str(err).splitlines()[0]) from None


to_dict = as_record
"""Plain JSON-serialisable dict of a resolved config (or one of its sections); choices become their names
(:func:`inversion.utils.records.as_record`)."""

save_config = write_yaml_record
"""Write a resolved config as YAML (a record of exactly what ran), after ``header`` (comment lines)
(:func:`inversion.utils.records.write_yaml_record`)."""


def config_digest(cfg: Any, *, ignore: Sequence[str] = ("out", "data.root"), **extra: Any) -> str:
    """The sha256 of a resolved config without the dotted keys ``ignore`` (where files are, not what a run
    computes), together with ``extra`` facts (e.g. the digest of the input the run reads): a run's identity
    (:func:`inversion.utils.records.record_digest`)."""
    return record_digest(cfg, ignore=ignore, **extra)
