"""dask-kaas: Kernel-as-a-Service on Dask."""
from . import config  # noqa: F401  (registers the kaas.* defaults)
from .errors import DeviceMemoryError, KaasError, KernelError, RequestError, StoreError
from .library import Library, builtin, register_library, resolve_library
