"""``dask kaas scheduler`` and ``dask kaas worker`` (also ``dask-kaas ...``): a KaaS cluster from two commands."""

from __future__ import annotations

import asyncio
import signal

import click
import dask.config

from .. import compat

PRELOAD = "dask_kaas.preload"
_dask_scheduler = compat.scheduler_command()


def _scheduler(**kwargs):
    preload = tuple(kwargs.get("preload") or ())
    kwargs["preload"] = preload if PRELOAD in preload else (*preload, PRELOAD)
    return _dask_scheduler.callback(**kwargs)


# dask scheduler's own options, with the KaaS plugin and page preloaded
scheduler = click.Command(
    "scheduler",
    params=list(_dask_scheduler.params),
    callback=_scheduler,
    context_settings=dict(ignore_unknown_options=True),
    help="A Dask scheduler with the KaaS plugin and the /kaas dashboard page from the start (dask scheduler's "
    f"options; the same as dask scheduler --preload {PRELOAD}). Settings: kaas.scheduler.* "
    "(e.g. DASK_KAAS__SCHEDULER__POLICY=balance).",
)


def _resources(text: str | None) -> dict:
    out = {}
    for item in (text or "").replace(",", " ").split():
        name, sep, amount = item.partition("=")
        try:
            out[name] = float(amount)
        except ValueError:
            raise click.BadParameter(f"expected NAME=AMOUNT pairs, got {item!r}", param_hint="--resources") from None
        if not sep or not name:
            raise click.BadParameter(f"expected NAME=AMOUNT pairs, got {item!r}", param_hint="--resources")
    return out


@click.command(
    "worker",
    help="The KaaS workers of this node: one process per visible GPU (CUDA_VISIBLE_DEVICES "
    "rotated so each sees its own GPU first), one thread each, the GPU resource and the "
    "KaaS plugin from the start. SCHEDULER is the scheduler's address.",
)
@click.argument("scheduler", required=False)
@click.option("--scheduler-file", default=None, help="Read the scheduler's address from this file.")
@click.option(
    "--device",
    type=click.Choice(["auto", "cuda", "host"]),
    default=None,
    help="auto: CUDA where a GPU answers, else the host device [default: kaas.device, auto].",
)
@click.option(
    "--nworkers", type=int, default=None, help="Worker processes [default: one per visible GPU; 1 with --device host]."
)
@click.option(
    "--device-memory",
    default=None,
    help="Each worker's RMM pool (CUDA) or capacity (host): bytes, 8GiB or 80%% (of the GPU's memory, "
    "split among the workers sharing it; on the host, of this machine's memory split among the "
    "workers) [default: kaas.cuda.pool-size / kaas.host.memory].",
)
@click.option("--rmm-pool-size", default=None, help="The same as --device-memory on a GPU (dask-cuda's name).")
@click.option("--store", default=None, help="Store profile or URL [default: kaas.store, else the profile local].")
@click.option("--name", default=None, help="Worker names: NAME-0, NAME-1, ... (NAME for a single worker).")
@click.option("--nthreads", type=int, default=1, show_default=True, help="Must be 1: one request at a time per device.")
@click.option("--memory-limit", default="auto", show_default=True, help="Host memory limit per worker (Dask's).")
@click.option("--resources", default=None, help='More resources beside GPU, e.g. "MEM=2e9 FAST=1".')
@click.option("--local-directory", default=None, help="Directory for the workers' scratch space.")
@click.option("--death-timeout", type=str, default=None, help="Seconds to wait for a scheduler before closing.")
@click.option("--host", default=None, help="Serving host (Dask's --host).")
@click.option("--interface", default=None, help="Network interface, e.g. eth0 or ib0.")
@click.option("--protocol", default=None, help="tcp, tls, ucx, ...")
@click.option("--dashboard/--no-dashboard", default=True, show_default=True, help="Each worker's own dashboard.")
@click.option("--preload", multiple=True, help="Modules each worker preloads (Dask's --preload).")
@click.option(
    "--reconnect/--no-reconnect",
    default=True,
    show_default=True,
    help="When the scheduler goes away, start the workers again to wait for it.",
)
@click.option("--tls-ca-file", default=None)
@click.option("--tls-cert", default=None)
@click.option("--tls-key", default=None)
def worker(
    scheduler,
    scheduler_file,
    device,
    nworkers,
    device_memory,
    rmm_pool_size,
    store,
    name,
    nthreads,
    memory_limit,
    resources,
    local_directory,
    death_timeout,
    host,
    interface,
    protocol,
    dashboard,
    preload,
    reconnect,
    tls_ca_file,
    tls_cert,
    tls_key,
):
    from distributed import Security

    from ..errors import KaasError
    from .worker import KaasWorkers

    if not scheduler and not scheduler_file:  # as dask worker: DASK_SCHEDULER_ADDRESS (the Dask operator sets it)
        scheduler = dask.config.get("scheduler-address", None)
    if not scheduler and not scheduler_file:
        raise click.UsageError(
            "give the scheduler's address (SCHEDULER, or DASK_SCHEDULER_ADDRESS) or --scheduler-file"
        )
    security = None
    if tls_ca_file or tls_cert or tls_key:
        security = Security(
            tls_ca_file=tls_ca_file, tls_worker_cert=tls_cert, tls_worker_key=tls_key, require_encryption=True
        )
    kwargs = dict(
        scheduler_file=scheduler_file,
        memory_limit=memory_limit,
        local_directory=local_directory,
        death_timeout=death_timeout,
        host=host,
        interface=interface,
        protocol=protocol,
        dashboard=dashboard,
        preload=list(preload),
        security=security,
    )
    try:
        workers = KaasWorkers(
            scheduler,
            nworkers=nworkers,
            device=device,
            device_memory=device_memory,
            rmm_pool_size=rmm_pool_size,
            store=store,
            name=name,
            nthreads=nthreads,
            resources=_resources(resources),
            **{k: v for k, v in kwargs.items() if v is not None},
        )
    except KaasError as e:
        raise click.ClickException(f"{type(e).__name__}: {e}") from None

    async def run():
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(workers.close()))
        await workers.serve(reconnect=reconnect)

    asyncio.run(run())
