"""Which CUDA failures poison a process's context, and which are out-of-memory.

Pure functions of an exception, so they are tested on any machine. CuPy's
``CUDARuntimeError`` and ``CUDADriverError`` carry the CUDA status code as
``status``; runtime and driver API use the same numbers for these errors. RMM
reports CUDA failures as plain exceptions whose message names the error, so
names are matched where no status code is found.
"""

from __future__ import annotations

#: Status codes after which "any further CUDA work will return the same error" (CUDA's own
#: wording): the process must be restarted to use the GPU again.
STICKY_STATUS: dict[int, str] = {
    214: "ECC_UNCORRECTABLE",
    220: "NVLINK_UNCORRECTABLE",
    700: "ILLEGAL_ADDRESS",
    702: "LAUNCH_TIMEOUT",
    710: "ASSERT",
    714: "HARDWARE_STACK_ERROR",
    715: "ILLEGAL_INSTRUCTION",
    716: "MISALIGNED_ADDRESS",
    717: "INVALID_ADDRESS_SPACE",
    718: "INVALID_PC",
    719: "LAUNCH_FAILED",
    721: "TENSOR_MEMORY_LEAK",
    911: "EXTERNAL_DEVICE",
    999: "UNKNOWN",
}

#: cudaErrorMemoryAllocation / CUDA_ERROR_OUT_OF_MEMORY.
OUT_OF_MEMORY_STATUS = 2

_RUNTIME_NAMES = {
    214: "cudaErrorECCUncorrectable",
    220: "cudaErrorNvlinkUncorrectable",
    700: "cudaErrorIllegalAddress",
    702: "cudaErrorLaunchTimeout",
    710: "cudaErrorAssert",
    714: "cudaErrorHardwareStackError",
    715: "cudaErrorIllegalInstruction",
    716: "cudaErrorMisalignedAddress",
    717: "cudaErrorInvalidAddressSpace",
    718: "cudaErrorInvalidPc",
    719: "cudaErrorLaunchFailure",
    721: "cudaErrorTensorMemoryLeak",
    911: "cudaErrorExternalDevice",
    999: "cudaErrorUnknown",
}
_STICKY_NAMES = tuple(_RUNTIME_NAMES.values()) + tuple(f"CUDA_ERROR_{name}" for name in STICKY_STATUS.values())


def _chain(exc: BaseException | None):
    """``exc`` and the exceptions it was raised from or during, innermost last (cycles cut)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def status_of(exc: BaseException) -> int | None:
    """The CUDA status code an exception (or one it came from) carries, if any."""
    for e in _chain(exc):
        status = getattr(e, "status", None)
        if isinstance(status, int) and not isinstance(status, bool):
            return status
    return None


def is_sticky(exc: BaseException) -> bool:
    """Whether the failure leaves the CUDA context unusable (the worker must restart)."""
    status = status_of(exc)
    if status is not None:
        return status in STICKY_STATUS
    return any(name in f"{type(e).__name__}: {e}" for e in _chain(exc) for name in _STICKY_NAMES)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether the failure is an allocation that did not fit (CuPy's OutOfMemoryError and RMM's
    out-of-memory are MemoryErrors), as opposed to a device fault during an allocation."""
    if is_sticky(exc):
        return False
    return status_of(exc) == OUT_OF_MEMORY_STATUS or any(isinstance(e, MemoryError) for e in _chain(exc))


def describe(exc: BaseException) -> str:
    """``"CUDARuntimeError: cudaErrorIllegalAddress: ... [status 700, sticky]"``."""
    status = status_of(exc)
    text = f"{type(exc).__name__}: {exc}"
    if status is not None:
        text += f" [status {status}{', sticky' if status in STICKY_STATUS else ''}]"
    return text
