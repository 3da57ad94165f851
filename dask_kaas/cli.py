"""The ``dask-kaas`` command (also ``dask kaas`` through Dask's dask_cli entry point)."""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC

import click
import numpy as np

from .cli_options import fail as _fail
from .cli_options import open_cli_store as _open_cli_store
from .cli_options import read_json_file
from .cli_options import store_options as _store_options
from .text import exact_bytes, format_bytes
from .text import table as text_table


@click.group(name="kaas", help="Kernel-as-a-Service on Dask.")
@click.version_option(package_name="dask-kaas")
def main():
    pass


@main.command(help="Run a multi-tenant GPU-kernel workload on an embedded local cluster and check every result.")
@click.option("--workers", "n_workers", type=int, default=None, help="Worker processes (default: one per GPU, or 2).")
@click.option(
    "--device",
    type=click.Choice(["auto", "cuda", "host"]),
    default=None,
    help="auto: CUDA where a GPU answers, else the host device [default: kaas.device, auto].",
)
@click.option("--device-memory", default=None, help="Per-worker device capacity / RMM pool, e.g. 256MiB or 80%.")
@click.option(
    "--store",
    default=None,
    help="Store profile or URL (default: kaas.store, else the profile local: ~/.local/share/dask-kaas/store).",
)
@click.option("--tenants", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option(
    "--requests",
    "n_requests",
    type=click.IntRange(1),
    default=200,
    show_default=True,
    help="MLP inference requests, spread over the tenants.",
)
@click.option("--jacobi", type=click.IntRange(0), default=8, show_default=True, help="Jacobi solves.")
@click.option("--dashboard-address", default=":8787", show_default=True)
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@click.option(
    "--duration",
    type=click.FloatRange(0),
    default=0,
    show_default=True,
    help="Keep the cluster (and its dashboard) up this many seconds after the workload.",
)
@click.option("--hold", is_flag=True, help="Keep the cluster (and its dashboard) up until Ctrl-C.")
def demo(
    n_workers, device, device_memory, store, tenants, n_requests, jacobi, dashboard_address, no_progress, duration, hold
):
    from distributed import Client

    from .api import worker_stats
    from .cluster import LocalKaasCluster
    from .demo import build_workload, format_table, run_workload, summarize

    workload = build_workload(tenants=tenants, requests=n_requests, jacobi=jacobi)
    click.echo(
        f"dask-kaas demo: {tenants} tenants x MLP (sgemm -> bias_relu -> sgemm -> softmax_rows), "
        f"{jacobi} Jacobi solves, {len(workload.jobs)} requests"
    )
    with (
        LocalKaasCluster(
            n_workers=n_workers,
            device=device,
            device_memory=device_memory,
            store=store,
            dashboard_address=dashboard_address,
        ) as cluster,
        Client(cluster) as client,
    ):
        click.echo(f"cluster: {len(cluster.workers)} {cluster.kaas_device} workers, store {cluster.store.url}")
        kaas_page = cluster.dashboard_link.rsplit("/", 1)[0] + "/kaas"
        lasts = (
            "until Ctrl-C"
            if hold
            else f"and {duration:g} s after"
            if duration
            else "while the demo runs; --duration S or --hold keep it after"
        )
        click.echo(f"dashboard: {kaas_page} (live {lasts})")
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
        for tenant, error in report["failed"]:
            click.echo(f"FAILED  {tenant}: {error}", err=True)
        if report["wrong"]:
            click.echo(f"WRONG RESULTS: {len(report['wrong'])} requests ({sorted(set(report['wrong']))})", err=True)
        if not (report["wrong"] or report["failed"]):
            click.echo("all results match NumPy")
        _keep_up(kaas_page, duration, hold)
        if report["wrong"] or report["failed"]:
            sys.exit(1)


def _keep_up(page: str, duration: float, hold: bool) -> None:
    """Leave the demo's cluster up for the dashboard: ``duration`` seconds, or until Ctrl-C with ``hold``."""
    if not (hold or duration):
        return
    click.echo(f"the dashboard stays up at {page} " + ("until Ctrl-C" if hold else f"for {duration:g} s"))
    try:
        if hold:
            _sleep_forever()
        time.sleep(duration)
    except KeyboardInterrupt:
        click.echo("stopping")


def _sleep_forever() -> None:
    while True:
        time.sleep(3600)


@main.command(help="Run a JSON request (dask-kaas or original KaaS format) on a running cluster; print its outputs.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--scheduler", "address", required=True, help="Scheduler address, e.g. tcp://127.0.0.1:8786")
@click.option("--input", "inputs", multiple=True, metavar="NAME=FILE.npy", help="An input buffer from a .npy file.")
@click.option("--save", type=click.Path(file_okay=False), default=None, help="Also write each output as NAME.npy here.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds to wait for the scheduler to answer.",
)
def submit(file, address, inputs, save, timeout):
    from distributed import Client

    from .errors import KaasError
    from .request import Request

    try:
        request, call_inputs = load_request_file(file)
        for item in inputs:
            name, _, path = item.partition("=")
            if not name or not path:
                raise click.BadParameter(f"expected NAME=FILE.npy, got {item!r}", param_hint="--input")
            try:
                call_inputs[name] = np.load(path)
            except (OSError, ValueError) as e:
                raise click.BadParameter(f"cannot read {path!r} as a .npy array: {e}", param_hint="--input") from None
        try:
            client = Client(address, timeout=timeout)
        except (OSError, TimeoutError) as e:
            raise click.ClickException(
                f"cannot reach the scheduler at {address} within {timeout:g} s ({type(e).__name__}: {e})"
            ) from None
        with client:
            outputs = client.submit(request, pure=False, **call_inputs).result()
    except KaasError as e:
        click.echo(f"error: {type(e).__name__}: {e}", err=True)
        sys.exit(2)
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()}", err=True)
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

    doc = read_json_file(path)
    if isinstance(doc, dict) and "request" in doc:
        body, given = doc["request"], doc.get("inputs") or {}
        if not isinstance(given, dict):
            raise RequestError(f"{path}: 'inputs' must map buffer names to lists of numbers")
    else:
        body, given = doc, {}
    request = Request.from_dict(body)
    return request, request.check_inputs(given)


# -- dask-kaas store ------------------------------------------------------------------------------------------------


@main.command(
    help="Check this node before it joins a cluster: versions, NVRTC, every built-in kernel against "
    "NumPy, the memory pool, copy bandwidth and launch cost. Exits 1 naming the failing check."
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cuda", "host"]),
    default=None,
    help="auto: CUDA where a GPU answers, else the host device [default: kaas.device, auto].",
)
@click.option(
    "--device-memory",
    default=None,
    help="Pool (CUDA) or capacity (host) for the checks [default: 2GiB on CUDA, 1GiB on the host].",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Also write every figure to this JSON file.",
)
@click.option("--quick", is_flag=True, help="Fewer sizes and repeats, 64 MiB copies.")
def doctor(device, device_memory, json_path, quick):
    from .doctor import diagnose, format_report

    report = diagnose(device, memory=device_memory, quick=quick)
    click.echo(format_report(report))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(report, f, indent=2, default=str)
    if not report["ok"]:
        sys.exit(1)


@main.group(name="store", help="Inspect and edit a buffer store: ls, put, get, rm (and the known profiles).")
def store_group():
    pass


def _iso(written) -> str:
    from datetime import datetime

    if written is None:
        return "-"
    return datetime.fromtimestamp(float(written), tz=UTC).isoformat(timespec="seconds")


def _shape_str(shape) -> str:
    return "(" + ", ".join(str(int(d)) for d in shape) + ("," if len(shape) == 1 else "") + ")"


@store_group.command(name="ls", help="List the keys (under PREFIX) of a namespace, or of every namespace.")
@click.argument("prefix", required=False, default="")
@_store_options
@click.option("--all-namespaces", "-A", is_flag=True, help="List every namespace.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
def store_ls(prefix, store_spec, namespace, all_namespaces, as_json):
    from .errors import KaasError, StoreKeyError

    try:
        store = _open_cli_store(store_spec)
        default_ns = getattr(store, "DEFAULT_NAMESPACE", "default")
        namespaces = store.namespaces() if all_namespaces else [namespace or default_ns]
        rows = []
        for ns in namespaces:
            for key in store.keys(namespace=ns):
                if prefix and not key.startswith(prefix):
                    continue
                try:
                    info = store.info(key, namespace=ns)
                except StoreKeyError:
                    continue  # deleted since keys() listed it
                rows.append((ns, key, info))
    except KaasError as e:
        _fail(e)
    if as_json:
        for ns, key, info in rows:
            click.echo(
                json.dumps(
                    {
                        "namespace": ns,
                        "key": key,
                        "version": info.get("version"),
                        "nbytes": int(info["nbytes"]),
                        "dtype": str(np.dtype(info["dtype"])),
                        "shape": [int(d) for d in info["shape"]],
                        "uid": info.get("uid"),
                        "written": info.get("written"),
                    }
                )
            )
        return
    header = (["namespace"] if all_namespaces else []) + ["key", "version", "size", "dtype", "shape", "written"]
    table = []
    for ns, key, info in rows:
        nbytes = int(info["nbytes"])
        size = exact_bytes(nbytes)
        table.append(
            ([ns] if all_namespaces else [])
            + [
                key,
                info.get("version", "-"),
                size,
                str(np.dtype(info["dtype"])),
                _shape_str(info["shape"]),
                _iso(info.get("written")),
            ]
        )
    where = "all namespaces" if all_namespaces else f"namespace {namespaces[0]!r}"
    if not table:
        click.echo(f"no keys{f' under {prefix!r}' if prefix else ''} in {where} of {store.url}")
        return
    click.echo(text_table(header, table))
    total = sum(int(info["nbytes"]) for _, _, info in rows)
    click.echo(f"{len(rows)} keys, {format_bytes(total)} in {where} of {store.url}")


@store_group.command(
    name="put",
    help="Store FILE under KEY: a .npy array, or any other file's raw bytes "
    "(as --dtype, default uint8). Prints the new version.",
)
@click.argument("key")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@_store_options
@click.option("--dtype", default=None, help="For raw (non-.npy) files: the element type, e.g. float32.")
def store_put(key, file, store_spec, namespace, dtype):
    from .errors import KaasError

    array = _read_array_file(file, dtype)
    try:
        store = _open_cli_store(store_spec)
        version = store.put(key, array, namespace=namespace)
    except KaasError as e:
        _fail(e)
    ns = getattr(version, "namespace", None) or namespace or getattr(store, "DEFAULT_NAMESPACE", "default")
    number = getattr(version, "version", version)
    click.echo(
        f"{ns}/{key} version {number}: {array.dtype} {_shape_str(array.shape)}, "
        f"{format_bytes(array.nbytes)} in {store.url}"
    )


def _read_array_file(path: str, dtype) -> np.ndarray:
    with open(path, "rb") as f:
        is_npy = f.read(6) == b"\x93NUMPY"
    if is_npy:
        if dtype is not None:
            raise click.BadParameter("only for raw files; a .npy file carries its own dtype", param_hint="--dtype")
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise click.BadParameter(f"{path}: cannot read as .npy: {e}", param_hint="FILE") from e
    if path.endswith(".npy"):
        raise click.BadParameter(f"{path}: not a .npy file (no NumPy header)", param_hint="FILE")
    try:
        dt = np.dtype(dtype or np.uint8)
    except TypeError as e:
        raise click.BadParameter(f"{dtype!r} is not a NumPy dtype", param_hint="--dtype") from e
    raw = open(path, "rb").read()
    if dt.itemsize == 0 or len(raw) % dt.itemsize:
        raise click.BadParameter(
            f"{path}: {len(raw)} bytes is not a whole number of {dt} items ({dt.itemsize} bytes each)",
            param_hint="--dtype",
        )
    return np.frombuffer(raw, dtype=dt).copy()


@store_group.command(name="get", help="Show KEY's version, dtype, shape and values, or save it with -o OUT.npy.")
@click.argument("key")
@_store_options
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write the array to this .npy file.",
)
def store_get(key, store_spec, namespace, output):
    from .errors import KaasError

    try:
        store = _open_cli_store(store_spec)
        info = store.info(key, namespace=namespace)
        array = store.get(key, namespace=namespace)
    except KaasError as e:
        _fail(e)
    ns = namespace or getattr(store, "DEFAULT_NAMESPACE", "default")
    summary = (
        f"{ns}/{key} version {info.get('version', '-')}: {array.dtype} {_shape_str(array.shape)}, "
        f"{format_bytes(array.nbytes)}, written {_iso(info.get('written'))}"
    )
    if output:
        np.save(output, array, allow_pickle=False)
        click.echo(f"{summary} -> {output}")
        return
    click.echo(summary)
    click.echo(np.array2string(array, threshold=20, precision=5))


@store_group.command(name="rm", help="Delete KEY.")
@click.argument("key")
@_store_options
def store_rm(key, store_spec, namespace):
    from .errors import KaasError

    try:
        store = _open_cli_store(store_spec)
        store.delete(key, namespace=namespace)
    except KaasError as e:
        _fail(e)
    ns = namespace or getattr(store, "DEFAULT_NAMESPACE", "default")
    click.echo(f"removed {ns}/{key} from {store.url}")


@store_group.command(name="profiles", help="List the store profiles and where they come from.")
def store_profiles():
    from .errors import KaasError
    from .store import default_store_spec, list_profiles, load_profile, profile_dirs

    default = default_store_spec()
    rows = []
    for name, path in list_profiles().items():
        try:
            url = load_profile(name)["url"]
        except KaasError as e:
            url = f"<error: {e}>"
        rows.append(("*" if name == default else "", name, url, path))
    click.echo(text_table(["", "profile", "url", "file"], rows))
    click.echo(f"searched: {', '.join(profile_dirs())}")


def _add_operator_commands() -> None:
    from .deploy.commands import scheduler, worker
    from .gateway.commands import function_group, gateway, token_group

    for command in (scheduler, worker, gateway, function_group, token_group):
        main.add_command(command)


_add_operator_commands()


if __name__ == "__main__":  # pragma: no cover
    main()
