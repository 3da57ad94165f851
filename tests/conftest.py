import contextlib
import os

import dask.config
import pytest

# The worker processes of the clusters tests start in this process fork from a server that has imported
# distributed, numpy and dask-kaas's worker side once (distributed's own test suite does the same): a
# worker starts in a fraction of the CPU a spawned one takes, and they are still separate processes.
# Clusters started as commands (dask kaas scheduler/worker) keep Dask's default, as users run them.
dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"})
FORKSERVER_PRELOAD = ["distributed", "numpy", "zarr", "fsspec", "dask_kaas.plugins.worker", "dask_kaas.runtime"]


def pytest_configure(config):
    from distributed.utils import get_mp_context

    # distributed names its own preloads on first use and never again: extend them, once, before any worker
    get_mp_context().set_forkserver_preload(FORKSERVER_PRELOAD)


@contextlib.contextmanager
def worker_environment(names):
    """Hand the current values of the environment variables ``names`` to worker processes started in this
    process: a forked worker has the environment of when the fork server started, not of now."""
    environ = dict(dask.config.get("distributed.nanny.environ", default={}) or {})
    environ.update({name: os.environ[name] for name in names if name in os.environ})
    with dask.config.set({"distributed.nanny.environ": environ}):
        yield


def gpu_skip_reason() -> str | None:
    """Why GPU tests skip here, or None to run them.

    They skip only where no GPU is present. Where one is, they run even if CuPy, RMM or the
    driver is broken, so a broken GPU stack fails loudly instead of passing as "skipped".
    """
    from dask_kaas.device import gpu_present

    return None if gpu_present() else "no NVIDIA GPU on this machine"


def pytest_collection_modifyitems(config, items):
    reason = gpu_skip_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _default_store_in_tmp(tmp_path_factory):
    """The default store (the profile "local", under $XDG_DATA_HOME) of every test and the worker
    processes it starts is a session temporary directory, never the user's."""
    old = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("xdg-data"))
    with worker_environment(["XDG_DATA_HOME"]):
        yield
    if old is None:
        os.environ.pop("XDG_DATA_HOME", None)
    else:
        os.environ["XDG_DATA_HOME"] = old


@pytest.fixture(autouse=True)
def _kernel_cache_in_tmp(tmp_path_factory, monkeypatch):
    """Compiled kernels go to a per-session temporary directory, never to the user's cache."""
    directory = str(tmp_path_factory.getbasetemp() / "kernel-cache")
    os.makedirs(directory, exist_ok=True)
    with dask.config.set({"kaas.kernel-cache.directory": directory}):
        yield


@pytest.fixture(scope="session")
def s3_server():
    """``(url, storage_options)`` of a bucket on a real S3-compatible HTTP server on 127.0.0.1.

    moto's ThreadedMotoServer on a free port, with test credentials set in
    this process's environment (worker processes inherit them); buckets
    ``kaas-test`` (the yielded URL, ``s3://kaas-test``) and ``dask-kaas``
    (the ``s3`` store profile's). Stopped at the end of the session.
    """
    pytest.importorskip("s3fs")
    pytest.importorskip("moto.server")
    import s3server

    # puts wait kaas.store-version-ttl before they return on S3: short here, except where a test says otherwise
    with (
        s3server.aws_test_env(),
        worker_environment(s3server.SET_NAMES),
        s3server.s3_server(buckets=("kaas-test", "dask-kaas")) as endpoint,
        dask.config.set({"kaas.store-version-ttl": 0.05}),
    ):
        yield "s3://kaas-test", s3server.storage_options(endpoint)


@pytest.fixture(scope="module")
def store_url(tmp_path_factory):
    """A file store of the test module's own."""
    return f"file://{tmp_path_factory.mktemp('store')}"


@pytest.fixture(scope="module")
def cluster(store_url):
    """Two host-device worker processes of 64 MiB each, shared by a test module."""
    from dask_kaas import LocalKaasCluster

    with LocalKaasCluster(
        n_workers=2, device="host", device_memory="64MiB", store=store_url, dashboard_address=":0"
    ) as cluster:
        yield cluster
