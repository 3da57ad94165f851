"""The examples run: both notebooks executed cell by cell (any cell error fails), and examples/jacobi.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def kernel_manager_factory(tmp_path_factory):
    """KernelManagers whose "python3" kernel is this interpreter (sys.executable), whatever kernelspecs
    the machine has registered elsewhere."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    kernels = tmp_path_factory.mktemp("kernelspecs")
    spec_dir = kernels / "python3"
    spec_dir.mkdir()
    cache = tmp_path_factory.getbasetemp() / "kernel-cache"
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (dask-kaas tests)",
        "language": "python",
        # compiled kernels (if any) go to the test session's cache, as in conftest.py
        "env": {"DASK_KAAS__KERNEL_CACHE__DIRECTORY": str(cache), "PYDEVD_DISABLE_FILE_VALIDATION": "1"},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))

    def make():
        ksm = KernelSpecManager(kernel_dirs=[str(kernels)], ensure_native_kernel=False)
        assert ksm.get_kernel_spec("python3").argv[0] == sys.executable
        return KernelManager(kernel_name="python3", kernel_spec_manager=ksm)

    return make


@pytest.mark.slow
@pytest.mark.parametrize("name", ["quickstart.ipynb", "pipeline.ipynb"])
def test_notebook_runs(name, tmp_path, kernel_manager_factory):
    nb = nbformat.read(EXAMPLES / name, as_version=4)
    nbformat.validate(nb)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), "outputs not cleared"
    assert "cluster.close()" in nb.cells[-1].source, "a notebook must end by closing its cluster"
    client = nbclient.NotebookClient(
        nb,
        km=kernel_manager_factory(),
        kernel_name="python3",
        timeout=300,
        resources={"metadata": {"path": str(tmp_path)}},  # the kernel's cwd
    )
    client.execute()  # raises CellExecutionError on any cell error
    assert (Path(os.environ["XDG_DATA_HOME"]) / "dask-kaas" / "store").is_dir()  # the default store
    assert not (tmp_path / "stores").exists()  # not under the notebook's directory
    displayed = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert any("text/html" in out.get("data", {}) for out in displayed)  # the request / cluster state views


@pytest.mark.slow
def test_jacobi_script(tmp_path):
    env = {**os.environ, "DASK_KAAS__KERNEL_CACHE__DIRECTORY": str(tmp_path / "kernel-cache")}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "jacobi.py"), "--n", "128", "--systems", "2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all solutions agree with numpy.linalg.solve" in proc.stdout
    assert not any(tmp_path.iterdir()) or {p.name for p in tmp_path.iterdir()} <= {"kernel-cache", "dask-scratch-space"}


@pytest.mark.slow
def test_jacobi_script_fails_on_a_wrong_result(tmp_path):
    # one sweep cannot reach the tolerance: the script must say so with a non-zero exit
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "jacobi.py"), "--n", "64", "--sweeps", "1", "--systems", "1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "WRONG" in proc.stdout
