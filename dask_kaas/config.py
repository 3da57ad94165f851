"""dask.config defaults for the ``kaas.`` namespace and size parsing."""
from __future__ import annotations

import os

import dask.config
import yaml

from .errors import ConfigError

_fn = os.path.join(os.path.dirname(__file__), "kaas.yaml")
with open(_fn) as f:
    _defaults = yaml.safe_load(f)
dask.config.update_defaults(_defaults)

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
    "k": 2**10, "m": 2**20, "g": 2**30,
}


def get(key: str, default=None):
    """Read ``kaas.<key>`` from dask.config."""
    return dask.config.get(f"kaas.{key}", default=default)


def parse_size(value, *, total: int | None = None, name: str = "size") -> int:
    """Bytes from an int, "2GiB", "512 MB" or "80%" (a share of ``total``)."""
    if isinstance(value, bool):
        raise ConfigError(f"{name}: expected a size, got {value!r}")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ConfigError(f"{name}: must be positive, got {value!r}")
        return int(value)
    if not isinstance(value, str):
        raise ConfigError(f"{name}: expected a size such as '2GiB' or '80%', got {value!r}")
    text = value.strip().lower().replace(" ", "")
    if text.endswith("%"):
        if total is None:
            raise ConfigError(f"{name}: a percentage ({value!r}) needs a known total")
        share = float(text[:-1]) / 100
        if not 0 < share <= 1:
            raise ConfigError(f"{name}: percentage must be in (0, 100], got {value!r}")
        return int(total * share)
    digits = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(digits):]
    if unit not in _UNITS or not digits:
        raise ConfigError(f"{name}: cannot read {value!r} as a size")
    size = int(float(digits) * _UNITS[unit])
    if size <= 0:
        raise ConfigError(f"{name}: must be positive, got {value!r}")
    return size
