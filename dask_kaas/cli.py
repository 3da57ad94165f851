"""The ``dask-kaas`` command (also ``dask kaas`` through Dask's dask_cli entry point)."""
from __future__ import annotations

import json
import sys

import click
import numpy as np


@click.group(name="kaas", help="Kernel-as-a-Service on Dask.")
@click.version_option(package_name="dask-kaas")
def main():
    pass


@main.command(help="Run a multi-tenant GPU-kernel workload on an embedded local cluster and check every result.")
@click.option("--workers", "n_workers", type=int, default=None, help="Worker processes (default: one per GPU, or 2).")
@click.option("--device", type=click.Choice(["auto", "cuda", "host"]), default="auto", show_default=True)
@click.option("--device-memory", default=None, help="Per-worker device capacity / RMM pool, e.g. 256MiB or 80%.")
@click.option("--store", default=None, help="Store URL (default: a file store under ./stores/local).")
@click.option("--tenants", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option("--requests", "n_requests", type=click.IntRange(1), default=200, show_default=True,
              help="MLP inference requests, spread over the tenants.")
@click.option("--jacobi", type=click.IntRange(0), default=8, show_default=True, help="Jacobi solves.")
@click.option("--dashboard-address", default=":8787", show_default=True)
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def demo(n_workers, device, device_memory, store, tenants, n_requests, jacobi, dashboard_address, no_progress):
    from distributed import Client

    from .api import worker_stats
    from .cluster import LocalKaasCluster
    from .demo import build_workload, format_table, run_workload, summarize

    workload = build_workload(tenants=tenants, requests=n_requests, jacobi=jacobi)
    click.echo(f"dask-kaas demo: {tenants} tenants x MLP (sgemm -> bias_relu -> sgemm -> softmax_rows), "
               f"{jacobi} Jacobi solves, {len(workload.jobs)} requests")
    with LocalKaasCluster(n_workers=n_workers, device=device, device_memory=device_memory, store=store,
                          dashboard_address=dashboard_address) as cluster, Client(cluster) as client:
        click.echo(f"cluster: {len(cluster.workers)} {cluster.kaas_device} workers, store {cluster.store.url}")
        report = run_workload(client, cluster.store, workload, progress=not no_progress)
        stats = worker_stats(client)
        rows = summarize(report, stats)
        click.echo(format_table(rows))
        total = len(report["jobs"])
        hits = sum(s["hits"] for s in stats.values())
        lookups = hits + sum(s["compulsory_misses"] + s["capacity_misses"] for s in stats.values())
        click.echo(
            f"\n{total} requests in {report['elapsed']:.2f} s ({total / report['elapsed']:.1f} req/s); "
            f"cache hit rate {hits / max(lookups, 1):.1%}; "
            f"{sum(s['bytes_from_store'] for s in stats.values())} bytes loaded from the store"
        )
        click.echo(f"dashboard: {cluster.dashboard_link}")
        for tenant, error in report["failed"]:
            click.echo(f"FAILED  {tenant}: {error}", err=True)
        if report["wrong"]:
            click.echo(f"WRONG RESULTS: {len(report['wrong'])} requests ({sorted(set(report['wrong']))})", err=True)
        if report["wrong"] or report["failed"]:
            sys.exit(1)
        click.echo("all results match NumPy")


@main.command(help="Run a JSON request (dask-kaas or original KaaS format) on a running cluster; print its outputs.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--scheduler", "address", required=True, help="Scheduler address, e.g. tcp://127.0.0.1:8786")
@click.option("--input", "inputs", multiple=True, metavar="NAME=FILE.npy", help="An input buffer from a .npy file.")
@click.option("--save", type=click.Path(file_okay=False), default=None, help="Also write each output as NAME.npy here.")
def submit(file, address, inputs, save):
    from distributed import Client

    from .errors import KaasError
    from .request import Request

    try:
        request, call_inputs = load_request_file(file)
        for item in inputs:
            name, _, path = item.partition("=")
            if not name or not path:
                raise click.BadParameter(f"expected NAME=FILE.npy, got {item!r}", param_hint="--input")
            call_inputs[name] = np.load(path)
        with Client(address, timeout=30) as client:
            outputs = client.submit(request, pure=False, **call_inputs).result()
    except KaasError as e:
        click.echo(f"error: {type(e).__name__}: {e}", err=True)
        sys.exit(2)
    assert isinstance(request, Request)
    for name, value in outputs.items():
        click.echo(f"{name}: {value.dtype} {value.shape}")
        click.echo(np.array2string(value, threshold=20, precision=5))
        if save:
            import os

            os.makedirs(save, exist_ok=True)
            np.save(os.path.join(save, f"{name}.npy"), value)


def load_request_file(path: str):
    """A request from JSON: the request dict itself, or ``{"request": ..., "inputs": {name: list}}``.

    Inputs given as lists take the buffer's dtype (uint8 when it declares none).
    """
    from .errors import RequestError
    from .request import Request

    with open(path) as f:
        try:
            doc = json.load(f)
        except json.JSONDecodeError as e:
            raise RequestError(f"{path}: not valid JSON ({e})") from e
    body = doc.get("request", doc) if isinstance(doc, dict) else doc
    request = Request.from_dict(body)
    inputs = {}
    for name, value in (doc.get("inputs") or {}).items() if isinstance(doc, dict) else ():
        spec = request.buffers.get(name)
        if spec is None:
            raise RequestError(f"{path}: input {name!r} is not a buffer of the request")
        inputs[name] = np.asarray(value, dtype=spec.dtype or np.uint8)
    return request, inputs


if __name__ == "__main__":  # pragma: no cover
    main()
