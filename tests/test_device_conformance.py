"""One conformance suite every ``Device`` must pass: the host device, the CUDA device on the host's
stand-in for CuPy and RMM (``tests/fakecuda.py``: our code's side of the contract), and the CUDA device
on a real GPU (``gpu``-marked: skipped where none is present).

The contract the runtime relies on (``dask_kaas.device.base.Device``): bytes copied in come back out
unchanged whatever their dtype, ``zero`` zeroes, freed memory can be allocated again, an allocation
past the device's capacity is a ``DeviceMemoryError`` (a ``KaasError``, never a crash) that leaves the
device usable, and ``describe``/``memory_info`` say what the device is.
"""

from __future__ import annotations

import numpy as np
import pytest

from dask_kaas.device import Device, HostDevice
from dask_kaas.errors import DeviceMemoryError, KaasError

MiB = 2**20
CAPACITY = 64 * MiB


class DeviceTests:
    """Subclasses give ``device``: a fresh device of about ``CAPACITY`` bytes."""

    kind: str

    @pytest.fixture
    def device(self):  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    def test_is_a_device_of_its_kind(self, device):
        assert isinstance(device, Device) and device.kind == self.kind
        described = device.describe()
        assert described["kind"] == self.kind and described["capacity"] > 0
        info = device.memory_info()
        assert info["total"] > 0 and 0 <= info["free"] <= info["total"]

    @pytest.mark.parametrize(
        "array",
        [
            np.arange(1000, dtype=np.float32),
            np.arange(-5, 5, dtype=np.int64),
            np.array([True, False]),
            np.frombuffer(b"\x00\xffraw", dtype=np.uint8),
            np.linspace(0, 1, 7, dtype=np.float64),
        ],
        ids=["f32", "i64", "bool", "bytes", "f64"],
    )
    def test_bytes_round_trip(self, device, array):
        raw = array.reshape(-1).view(np.uint8)
        handle = device.allocate(raw.nbytes)
        try:
            device.copy_in(handle, raw)
            device.synchronize()
            back = device.copy_out(handle)
            assert back.dtype == np.uint8 and back.nbytes == raw.nbytes
            assert bytes(back) == bytes(raw)
            assert back.view(array.dtype).tolist() == array.reshape(-1).tolist()
        finally:
            device.free(handle)

    def test_zero(self, device):
        handle = device.allocate(4096)
        try:
            device.copy_in(handle, np.full(4096, 7, np.uint8))
            device.zero(handle)
            assert not device.copy_out(handle).any()
        finally:
            device.free(handle)

    def test_copy_out_many_is_copy_out_each(self, device):
        handles = [device.allocate(n) for n in (16, 1024, 3)]
        try:
            for i, h in enumerate(handles):
                device.copy_in(h, np.full(int(h.nbytes), i + 1, np.uint8))  # handles carry their size
            many = device.copy_out_many(handles)
            assert [bytes(m) for m in many] == [bytes(device.copy_out(h)) for h in handles]
        finally:
            for h in handles:
                device.free(h)

    def test_freed_memory_is_allocated_again(self, device):
        for _ in range(8):  # eight times half the capacity: only if each free really frees
            handle = device.allocate(CAPACITY // 2)
            device.free(handle)
        info = device.memory_info()
        assert info["free"] > 0

    def test_past_capacity_is_a_kaas_error_and_the_device_goes_on(self, device):
        with pytest.raises(DeviceMemoryError) as info:
            device.allocate(64 * CAPACITY)
        assert isinstance(info.value, KaasError)
        handle = device.allocate(1024)  # still usable
        device.copy_in(handle, np.ones(1024, np.uint8))
        assert device.copy_out(handle).sum() == 1024
        device.free(handle)


class TestHostDevice(DeviceTests):
    kind = "host"

    @pytest.fixture
    def device(self):
        dev = HostDevice(CAPACITY)
        yield dev
        dev.close()


class TestCudaDeviceOnTheStandIn(DeviceTests):
    kind = "cuda"

    @pytest.fixture
    def device(self, monkeypatch):
        import fakecuda

        fakecuda.install(monkeypatch, n_gpus=1, total=16 * 2**30)
        from dask_kaas.device.cuda import CudaDevice

        dev = CudaDevice(0, pool_size=CAPACITY)
        yield dev
        dev.close()


@pytest.mark.gpu
class TestCudaDeviceOnAGPU(DeviceTests):
    kind = "cuda"

    @pytest.fixture
    def device(self):  # conftest skips gpu-marked tests where no GPU is present
        from dask_kaas.device.cuda import CudaDevice

        dev = CudaDevice(0, pool_size=CAPACITY)
        yield dev
        dev.close()
