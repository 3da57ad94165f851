"""``dask kaas gateway``, ``dask kaas function put|ls|get|rm`` and ``dask kaas token add|ls|rm``."""

from __future__ import annotations

import json
import os

import click

from ..cli_options import fail, open_cli_store, read_json_file, store_options
from ..text import table


def _tokens_path(path: str | None) -> str:
    from .. import config

    return os.path.expanduser(path or config.get("gateway.tokens"))


@click.command(
    "gateway",
    help="Serve the Open Inference Protocol v2 (REST, and gRPC with --grpc-port) for the "
    "functions of the store: "
    "tenants call them over HTTP with their bearer tokens; each call runs as a KaaS "
    "request on the cluster.",
)
@click.option(
    "--scheduler",
    envvar="DASK_SCHEDULER_ADDRESS",
    default=None,
    help="The scheduler's address, e.g. tcp://127.0.0.1:8786 [env DASK_SCHEDULER_ADDRESS].",
)
@click.option("--host", default=None, help="Address to listen on [default: kaas.gateway.host, 127.0.0.1].")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Port [default: kaas.gateway.port, 8000].")
@click.option(
    "--grpc-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Also serve the protocol's gRPC service (Triton's inference.GRPCInferenceService) on this port, "
    "0 for a free one [default: kaas.gateway.grpc-port, none: REST only].",
)
@click.option("--store", default=None, help="Store profile or URL, the workers' [default: kaas.store].")
@click.option(
    "--tokens",
    default=None,
    type=click.Path(dir_okay=False),
    help="The tokens file [default: kaas.gateway.tokens, ~/.config/dask-kaas/tokens.yaml].",
)
@click.option("--max-body", default=None, help="Largest request body, e.g. 64MiB [default: kaas.gateway.max-body].")
@click.option(
    "--max-json",
    default=None,
    help="Largest JSON of one infer body after decompression, e.g. 16MiB; each call's own allowance is "
    "smaller, from its function's tensors [default: kaas.gateway.max-json].",
)
@click.option(
    "--read-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds a request body may take to arrive before 408 [default: kaas.gateway.read-timeout].",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds a call may take before 504 [default: kaas.gateway.timeout].",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
)
def gateway(scheduler, host, port, grpc_port, store, tokens, max_body, max_json, read_timeout, timeout, log_level):
    from .. import config
    from ..errors import KaasError
    from ..logs import setup_logging
    from .app import GatewaySettings
    from .server import serve

    setup_logging()
    try:
        settings = GatewaySettings(
            scheduler=scheduler,
            store=store,
            tokens=_tokens_path(tokens),
            max_body=max_body,
            max_json=max_json,
            read_timeout=read_timeout,
            timeout=timeout,
        )
        if grpc_port is None and config.get("gateway.grpc-port") is not None:
            grpc_port = int(config.get("gateway.grpc-port"))
        serve(
            settings,
            host=host or config.get("gateway.host"),
            port=int(port if port is not None else config.get("gateway.port")),
            log_level=log_level,
            grpc_port=grpc_port,
        )
    except KaasError as e:
        fail(e)


# -- functions ----------------------------------------------------------------------------------------------------


@click.group("function", help="The function repository: requests callable through the gateway, by name and version.")
def function_group():
    pass


def _repo(store_spec):
    from ..functions import FunctionRepository

    return FunctionRepository(open_cli_store(store_spec))


def _ns(namespace):
    return namespace or "default"


@function_group.command(
    "put",
    help='Register FILE.json (a request in either format, or {"request": ..., '
    '"inputs": [...], "outputs": [...]}) as the next version of NAME.',
)
@click.argument("name")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@store_options
def function_put(name, file, store_spec, namespace):
    from ..errors import KaasError

    try:
        fn = _repo(store_spec).put(name, read_json_file(file), namespace=_ns(namespace))
    except KaasError as e:
        fail(e)
    ins = ", ".join(f"{t.name} {t.datatype}{list(t.shape)}" for t in fn.inputs) or "none"
    outs = ", ".join(f"{t.name} {t.datatype}{list(t.shape)}" for t in fn.outputs)
    click.echo(f"{fn.qualified_name} version {fn.version}: inputs {ins}; outputs {outs}")


@function_group.command("ls", help="List the functions of a namespace (newest versions).")
@store_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def function_ls(store_spec, namespace, as_json):
    from ..errors import KaasError

    try:
        repo = _repo(store_spec)
        found = [(fn, repo.versions(fn.name, namespace=fn.namespace)) for fn in repo.ls(namespace=_ns(namespace))]
    except KaasError as e:
        fail(e)
    if as_json:
        for fn, versions in found:
            click.echo(
                json.dumps(
                    {
                        "name": fn.name,
                        "namespace": fn.namespace,
                        "version": fn.version,
                        "versions": versions,
                        "inputs": [t.to_dict() for t in fn.inputs],
                        "outputs": [t.to_dict() for t in fn.outputs],
                    }
                )
            )
        return
    if not found:
        click.echo(f"no functions in namespace {_ns(namespace)!r} of {repo.store.url}")
        return
    rows = [
        [
            fn.name,
            fn.version,
            ",".join(map(str, versions)),
            " ".join(t.name for t in fn.inputs) or "-",
            " ".join(t.name for t in fn.outputs),
            " ".join(fn.request.kernel_names),
        ]
        for fn, versions in found
    ]
    click.echo(table(["function", "version", "versions", "inputs", "outputs", "kernels"], rows))


@function_group.command("get", help="Print a function's record (JSON): its request, inputs and outputs.")
@click.argument("name")
@click.option("--version", type=click.IntRange(1), default=None, help="Default: the newest.")
@store_options
def function_get(name, version, store_spec, namespace):
    from ..errors import KaasError

    try:
        fn = _repo(store_spec).get(name, namespace=_ns(namespace), version=version)
    except KaasError as e:
        fail(e)
    click.echo(json.dumps(fn.to_dict(), indent=2))


@function_group.command("rm", help="Remove a function (every version, or one with --version).")
@click.argument("name")
@click.option("--version", type=click.IntRange(1), default=None)
@store_options
def function_rm(name, version, store_spec, namespace):
    from ..errors import KaasError

    try:
        removed = _repo(store_spec).rm(name, namespace=_ns(namespace), version=version)
    except KaasError as e:
        fail(e)
    click.echo(f"removed {_ns(namespace)}:{name} version(s) {', '.join(map(str, removed))}")


# -- tokens -------------------------------------------------------------------------------------------------------


@click.group("token", help="Tenants' bearer tokens for the gateway (the file keeps only their hashes).")
def token_group():
    pass


_tokens_option = click.option(
    "--tokens", default=None, type=click.Path(dir_okay=False), help="The tokens file [default: kaas.gateway.tokens]."
)


@token_group.command("add", help="Create a token for TENANT and print it (once: only its hash is kept).")
@click.argument("tenant")
@_tokens_option
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Requests per second this tenant may send through the gateway.",
)
@click.option("--burst", type=click.FloatRange(min=1), default=None, help="Requests at once before the rate applies.")
def token_add(tenant, tokens, rate, burst):
    from ..errors import KaasError
    from .tokens import add_token

    path = _tokens_path(tokens)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        click.echo(add_token(path, tenant, rate=rate, burst=burst))
    except KaasError as e:
        fail(e)


@token_group.command("ls", help="List the tenants of the tokens file (never the tokens).")
@_tokens_option
def token_ls(tokens):
    from ..errors import KaasError
    from .tokens import load_tokens

    path = _tokens_path(tokens)
    try:
        entries = load_tokens(path)
    except KaasError as e:
        fail(e)
    if not entries:
        click.echo(f"no tenants in {path}")
        return
    click.echo(
        table(
            ["tenant", "tokens", "rate", "burst"],
            [[t, len(e.hashes), e.rate or "-", e.burst or "-"] for t, e in entries.items()],
        )
    )


@token_group.command("rm", help="Revoke every token of TENANT.")
@click.argument("tenant")
@_tokens_option
def token_rm(tenant, tokens):
    from ..errors import KaasError
    from .tokens import revoke_tenant

    try:
        n = revoke_tenant(_tokens_path(tokens), tenant)
    except KaasError as e:
        fail(e)
    click.echo(f"revoked {n} token(s) of {tenant!r}")
