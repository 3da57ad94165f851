import os

import pytest


def gpu_available() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if gpu_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU with CuPy")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _kernel_cache_in_tmp(tmp_path_factory, monkeypatch):
    """Compiled kernels go to a per-session temporary directory, never to the user's cache."""
    import dask.config

    directory = str(tmp_path_factory.getbasetemp() / "kernel-cache")
    os.makedirs(directory, exist_ok=True)
    with dask.config.set({"kaas.kernel-cache.directory": directory}):
        yield
