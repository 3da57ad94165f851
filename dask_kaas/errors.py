"""The dask-kaas error hierarchy: everything the system raises on purpose is a KaasError."""


class KaasError(Exception):
    """Root of every error dask-kaas raises on purpose."""


class RequestError(KaasError, ValueError):
    """A request (or a call's inputs) breaks a rule of the request model."""


class TenantError(KaasError):
    """A request names a tenant its client may not act for (``kaas.scheduler.tenant-identity``)."""


class ConfigError(KaasError, ValueError):
    """A setting or option is not valid (an unknown policy or device, a size that cannot be read, ...),
    or names something this machine does not have (device="cuda" without a GPU)."""


class KernelError(KaasError):
    """A kernel library or kernel cannot be found, compiled, loaded or run."""


class DeviceMemoryError(KaasError):
    """A request's pinned buffers cannot fit the device's capacity."""


class StoreError(KaasError):
    """The buffer store cannot serve a read or a write."""


class StoreKeyError(StoreError, KeyError):
    """A key is not in the store."""

    def __str__(self):  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class AdmissionRejected(KaasError):
    """The scheduler predicts the request cannot finish before its deadline, so it never starts.

    ``predicted`` is the predicted latency in seconds (submission to completion),
    ``deadline`` the request's deadline in seconds.
    """

    def __init__(self, message: str, predicted: float | None = None, deadline: float | None = None):
        super().__init__(message, predicted, deadline)
        self.message = message
        self.predicted = predicted
        self.deadline = deadline

    def __str__(self):
        return self.message


class FunctionStale(KaasError):
    """A registered function's consts in the store are no longer those it was written for (a key of
    another size, or gone): a call would read the wrong bytes, so it is refused."""


class FunctionNotFound(KaasError, LookupError):
    """No function of that name (and version) that the tenant may call: missing, or another tenant's."""
