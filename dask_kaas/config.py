"""dask.config defaults for the ``kaas.`` namespace and size parsing."""

from __future__ import annotations

import os

import dask.config
import yaml
from dask.utils import parse_bytes

from .errors import ConfigError

_fn = os.path.join(os.path.dirname(__file__), "kaas.yaml")
with open(_fn) as f:
    _defaults = yaml.safe_load(f)
dask.config.update_defaults(_defaults)


def get(key: str):
    """``kaas.<key>`` from dask.config; its default is in ``kaas.yaml`` (never in code)."""
    return dask.config.get(f"kaas.{key}")


def get_list(key: str) -> list:
    """``kaas.<key>`` as a list (null: empty; one string: a list of it)."""
    value = get(key)
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [value]
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ConfigError(f"kaas.{key}: expected a list, got {value!r}")
    return list(value)


def get_dict(key: str) -> dict:
    """``kaas.<key>`` as a dict (null: empty)."""
    value = get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"kaas.{key}: expected a mapping, got {value!r}")
    return dict(value)


def parse_size(value, *, total: int | None = None, name: str = "size") -> int:
    """Positive bytes from an int, a size Dask reads (``"2GiB"``, ``"512 MB"``: ``dask.utils.parse_bytes``)
    or ``"80%"`` (a share of ``total``); a :class:`ConfigError` naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{name}: expected a size such as '2GiB' or '80%', got {value!r}")
    if isinstance(value, str) and value.strip().endswith("%"):
        if total is None:
            raise ConfigError(f"{name}: a percentage ({value!r}) needs a known total")
        try:
            share = float(value.strip()[:-1]) / 100
        except ValueError:
            raise ConfigError(f"{name}: cannot read {value!r} as a percentage") from None
        if not 0 < share <= 1:
            raise ConfigError(f"{name}: percentage must be in (0, 100], got {value!r}")
        return int(total * share)
    try:
        size = parse_bytes(value)
    except (ValueError, TypeError, OverflowError):
        raise ConfigError(f"{name}: cannot read {value!r} as a size") from None
    if size <= 0:
        raise ConfigError(f"{name}: must be positive, got {value!r}")
    return size


def scheduler_settings() -> dict:
    """The scheduling core's tuning from ``kaas.scheduler.*``, as keyword arguments of
    :class:`dask_kaas.scheduling.SchedulingCore` (all but ``policy``)."""
    return {
        "depth": int(get("scheduler.queue-depth")),
        "weights": get_dict("scheduler.weights"),
        "margin": float(get("scheduler.admission-margin")),
        # moving a tenant also spreads its consts over more caches; a move must pay for that
        "stickiness": float(get("scheduler.stickiness")),
        "load_bandwidth": float(parse_size(get("scheduler.load-bandwidth"), name="kaas.scheduler.load-bandwidth")),
        "replication": parse_bool(get("scheduler.replication"), "kaas.scheduler.replication"),
    }


def eviction() -> str:
    """``kaas.eviction``: the device cache's eviction order (:mod:`dask_kaas.eviction`)."""
    from .eviction import EVICTIONS

    value = get("eviction")
    if value not in EVICTIONS:
        raise ConfigError(f"kaas.eviction must be one of {', '.join(EVICTIONS)}, got {value!r}")
    return value


def parse_bool(value, name: str) -> bool:
    """A boolean setting: true/false (or yes/no, 1/0 as strings from the environment), else ConfigError."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.lower() in ("true", "yes", "1")
    raise ConfigError(f"{name} must be true or false, got {value!r}")
