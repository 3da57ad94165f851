"""Options and helpers the command groups share (store selection, failing with a clear message)."""
from __future__ import annotations

import sys

import click


def store_options(f):
    f = click.option("--namespace", "-n", default=None, metavar="NS",
                     help="Tenant namespace (default: the store's default namespace, \"default\").")(f)
    f = click.option("--store", "-s", "store_spec", default=None, metavar="NAME_OR_URL",
                     help="Store profile (stores/NAME.yaml) or URL (default: dask config kaas.store, "
                          "else the profile \"local\").")(f)
    return f


def fail(e) -> None:
    click.echo(f"error: {type(e).__name__}: {e}", err=True)
    sys.exit(2)


def open_cli_store(spec):
    from .store import BufferStore, default_store_spec, resolve_store

    url, storage_options, shared = resolve_store(spec if spec else default_store_spec())
    return BufferStore(url, storage_options=storage_options, shared=shared)
