"""``dask-kaas doctor``: on the host device for real, its CUDA checks on the fakecuda stand-in."""

import json

import fakecuda
import pytest
from click.testing import CliRunner

from dask_kaas import builtin, doctor
from dask_kaas.cli import main
from dask_kaas.kernels import nvrtc

needs_nvrtc = pytest.mark.skipif(not nvrtc.available(), reason="NVRTC is not installed")


def test_doctor_on_the_host_device(tmp_path):
    out = tmp_path / "doctor.json"
    result = CliRunner().invoke(main, ["doctor", "--device", "host", "--quick", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert statuses["device"] == "ok" and statuses["kernels"] == "ok" and statuses["pool"] == "ok"
    assert statuses["driver"] == "skip" and "fail" not in statuses.values() and report["ok"]
    assert report["device"]["kind"] == "host"
    versions = report["checks"][0]["figures"]
    assert "cuda_unavailable" in versions and versions["dask_kaas"]
    launch = next(c for c in report["checks"] if c["name"] == "launch")["figures"]
    assert launch["runtime_per_launch_us"] > 0 and launch["raw_per_launch_us"] > 0
    assert "doctor: ok" in result.output and "CUDA unavailable" in result.output


def test_doctor_without_a_gpu_fails_naming_the_device(tmp_path):
    result = CliRunner().invoke(main, ["doctor", "--device", "cuda", "--json", str(tmp_path / "d.json")])
    assert result.exit_code == 1
    assert "FAILED: device" in result.output
    report = json.loads((tmp_path / "d.json").read_text())
    assert report["failed"] == ["device"] and "CUDA was asked for" in report["checks"][1]["detail"]


def test_a_wrong_kernel_fails_the_kernels_check(monkeypatch):
    monkeypatch.setitem(builtin.twins, "vadd", lambda launch, n, a, b, c: c.__setitem__(slice(None), 0))
    report = doctor.diagnose("host", quick=True)
    assert report["failed"] == ["kernels"] and not report["ok"]
    kernels = next(c for c in report["checks"] if c["name"] == "kernels")
    assert "vadd: output 'c' differs from NumPy" in kernels["detail"]


@needs_nvrtc
def test_cuda_checks_on_the_stand_in(monkeypatch):
    m = fakecuda.install(monkeypatch, n_gpus=1, total=8 * 2**30)
    from dask_kaas.device.cuda import CudaDevice
    from dask_kaas.runtime import Runtime
    from dask_kaas.store import BufferStore

    dev = CudaDevice(0, pool_size="1GiB")
    assert doctor.check_driver(dev).status == "ok"
    pool = doctor.check_pool(dev)
    assert pool.status == "ok", pool.detail
    after, before = pool.figures["after"], pool.figures["before"]
    assert after["rmm_current_bytes"] - after["spare_bytes"] == before["rmm_current_bytes"] - before["spare_bytes"]
    assert doctor.check_bandwidth(dev, 2**20, 1).status == "ok"
    runtime = Runtime(dev, BufferStore("memory://doctor-fake"))
    launch = doctor.check_launch(runtime, 8, 2)
    assert launch.status == "ok" and "raw CuPy" in launch.figures["baseline"]
    assert sum(1 for name, *_ in m.launches if name == "empty") > 8
    m.driver = 12040  # a CUDA 12.4 driver cannot load NVRTC 13 cubins
    dev.driver = nvrtc.cuda_version(m.driver)
    if nvrtc.version()[0] > 12:
        check = doctor.check_driver(dev)
        assert check.status == "fail" and "this driver supports CUDA 12.4" in check.detail
    runtime.close()
