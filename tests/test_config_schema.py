"""kaas-schema.yaml describes kaas.yaml exactly (as distributed's test_schema_is_complete checks its own)."""

from __future__ import annotations

import os

import pytest
import yaml

import dask_kaas

jsonschema = pytest.importorskip("jsonschema")

HERE = os.path.dirname(dask_kaas.__file__)


def _load(name: str) -> dict:
    with open(os.path.join(HERE, name)) as f:
        return yaml.safe_load(f)


def _leaves(config: dict, schema: dict, path: str = "") -> list[str]:
    """Keys of ``config`` the schema does not name, and schema keys without a default in ``config``."""
    problems = []
    properties = schema.get("properties", {})
    for key, value in config.items():
        where = f"{path}.{key}" if path else key
        if key not in properties:
            problems.append(f"{where}: in kaas.yaml, not in the schema")
        elif isinstance(value, dict) and properties[key].get("properties"):
            problems += _leaves(value, properties[key], where)
    for key in properties:
        if key not in config:
            problems.append(f"{path}.{key}: in the schema, no default in kaas.yaml")
    return problems


def test_schema_is_complete():
    assert _leaves(_load("kaas.yaml"), _load("kaas-schema.yaml")) == []


def test_defaults_are_valid_under_the_schema():
    jsonschema.validate(_load("kaas.yaml"), _load("kaas-schema.yaml"))


def test_every_schema_key_is_described_or_obvious():
    """A key without a description must be self-explanatory (the gateway's host and port)."""
    undescribed = []

    def walk(schema: dict, path: str) -> None:
        for key, sub in schema.get("properties", {}).items():
            where = f"{path}.{key}" if path else key
            if sub.get("properties"):
                walk(sub, where)
            elif "description" not in sub:
                undescribed.append(where)

    walk(_load("kaas-schema.yaml"), "")
    assert undescribed == ["kaas.gateway.host", "kaas.gateway.port"]


@pytest.mark.parametrize(
    "change, bad",
    [
        ({"scheduler": {"policy": "fastest"}}, "fastest"),
        ({"eviction": "mru"}, "mru"),
        ({"scheduler": {"queue-depth": 0}}, "0"),
        ({"gateway": {"port": 70000}}, "70000"),
        ({"schedular": {}}, "schedular"),
    ],
)
def test_the_schema_catches_a_wrong_value_or_a_misspelt_key(change, bad):
    config = _load("kaas.yaml")
    for section, value in change.items():
        if isinstance(value, dict) and isinstance(config["kaas"].get(section), dict):
            config["kaas"][section].update(value)
        else:
            config["kaas"][section] = value
    with pytest.raises(jsonschema.ValidationError, match=bad):
        jsonschema.validate(config, _load("kaas-schema.yaml"))


def test_the_schema_ships_with_the_package():
    import importlib.resources

    assert importlib.resources.files("dask_kaas").joinpath("kaas-schema.yaml").is_file()
