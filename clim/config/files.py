"""Config files: named presets (``clim/presets/NAME.yaml``, one may name another under ``base:``), a YAML
file of the user's own, ``--set key=value`` overrides, and YAML out again (``clim config``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from clim.config.schema import (CLUSTERED_SELECTIONS, KMEANS_SEED_LIMIT, REFRESH_SEED_STRIDE, Config, ConfigError,
                                _flatten)

PRESET_DIR = Path(__file__).parents[1] / "presets"
_PRESET_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"cannot parse {path}: {str(error).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys")
    return values


def _resolve(values: dict[str, Any], seen: tuple[str, ...] = (), source: str = "") -> dict[str, Any]:
    """Apply ``base:`` inheritance: the base preset's keys, then these. ``source`` (the file) is for messages."""
    base = values.pop("base", None)
    if base is None:
        return _flatten(values)
    if base in seen:
        raise ConfigError(f"preset inheritance loops through '{base}'")
    path = _preset_path(base, f"'base' in {source}" if source else "'base'")
    return {**_resolve(_load_yaml(path), seen + (base,), str(path)), **_flatten(values)}


def _preset_path(name: Any, where: str = "--preset") -> Path:
    """``clim/presets/NAME.yaml``: a preset (``--preset`` or ``base:``) is a name, never a path."""
    if not isinstance(name, str) or not _PRESET_NAME.fullmatch(name) or ".." in name:
        raise ConfigError(f"invalid preset name {name!r} for {where} (a NAME from clim/presets, without a path: "
                          f"{', '.join(preset_names())}; a YAML file of your own goes through --config FILE)")
    path = PRESET_DIR / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown preset '{name}' (known: {', '.join(preset_names())})")
    return path


def dump_yaml(config: Config, header: str | None = None) -> str:
    """Every key of ``config`` as YAML that :func:`load_config` reads back to an equal config
    (``clim config``); ``header`` lines become ``#`` comments on top."""
    comment = "".join(f"# {line}\n" for line in header.splitlines()) if header else ""
    return comment + yaml.dump(config.to_dict(), Dumper=_BlockDumper, sort_keys=False)


class _BlockDumper(yaml.SafeDumper):
    """Sections one key per line, lists inline (``resolutions: [224, 160]``)."""


_BlockDumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True))


def load_config(preset: str | None = None, config_file: str | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a validated config from a preset or a YAML file, then ``key=value`` overrides."""
    if preset is not None:
        path = _preset_path(preset)
        values = _resolve(_load_yaml(path), source=str(path))
    elif config_file is not None:
        path = Path(config_file)
        if not path.exists():
            raise ConfigError(f"config file not found: {config_file}")
        values = _resolve(_load_yaml(path), source=config_file)
    else:
        values = {}
    values.update(parse_overrides(overrides))
    config = Config.from_dict(values)
    check_training(config)
    return config


def check_training(config: Config) -> None:
    """The rules that only matter to start (or go on with) a run, on top of :meth:`Config.validate`;
    :func:`load_config` applies them. A checkpoint's config is not held to them, so that a run trained
    before a rule existed can still be evaluated."""
    queue, batch = config.model.queue_size, config.train.batch_size
    if queue < batch:
        raise ConfigError(f"invalid value {queue!r} for 'model.queue_size' (must be >= train.batch_size={batch}: "
                          f"every step writes the global batch of keys into the queue, which keeps only its last "
                          f"queue_size keys)")
    method, seed = config.method, config.train.seed
    if method.name == "clim" and method.selection in CLUSTERED_SELECTIONS:
        limit = (KMEANS_SEED_LIMIT - config.train.epochs) // REFRESH_SEED_STRIDE
        if seed > limit:
            raise ConfigError(f"invalid value {seed!r} for 'train.seed' (must be <= {limit} for method.name=clim with "
                              f"train.epochs={config.train.epochs}: the k-means of a refresh is seeded with "
                              f"train.seed * {REFRESH_SEED_STRIDE} + epoch, which faiss takes as a 32-bit int)")


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``--set`` strings ``key=value`` -> ``{key: value}``; :class:`ConfigError` for one without ``=``."""
    values = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}' must look like key=value")
        values[key.strip()] = value
    return values
