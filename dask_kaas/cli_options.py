"""Options and helpers the command groups share (store selection, failing with a clear message)."""

from __future__ import annotations

import sys
from typing import NoReturn

import click


def store_options(f):
    f = click.option(
        "--namespace",
        "-n",
        default=None,
        metavar="NS",
        help='Tenant namespace (default: the store\'s default namespace, "default").',
    )(f)
    f = click.option(
        "--store",
        "-s",
        "store_spec",
        default=None,
        metavar="NAME_OR_URL",
        help='Store profile (stores/NAME.yaml) or URL (default: dask config kaas.store, else the profile "local").',
    )(f)
    return f


def fail(e) -> NoReturn:
    click.echo(f"error: {type(e).__name__}: {e}", err=True)
    sys.exit(2)


def open_cli_store(spec):
    from .store import open_store

    return open_store(spec or None)


def read_json_file(path: str):
    """A JSON file's document; a RequestError naming the file when it is not valid JSON."""
    import json

    from .errors import RequestError

    with open(path, "rb") as f:
        text = f.read()
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise RequestError(f"{path}: not valid JSON ({type(e).__name__}: {str(e)[:200]})") from None
