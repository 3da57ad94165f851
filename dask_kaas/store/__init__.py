"""Persistent buffers: versioned Zarr v3 arrays in tenant namespaces, over any fsspec URL.

==================  ==================================================================
``buffer_store``    :class:`BufferStore`: put, get, versions, listing, delete; ``open_store``
``namespace_view``  :class:`NamespaceView`: a store bound to one namespace
``backend``         the opened filesystem, Zarr store and pointers, and the paths of the layout
``versions``        :class:`Version` and the pointer records a commit writes
``pointers``        compare-and-swap of a key's pointer on each backend (flock, S3 If-Match); the commit loop
``version_cache``   which version a process may use without asking the store again
``gc``              which data no pointer needs any more, and removing it
``namespaces``      which ``(namespace, key)`` a tenant's key names, and whether it may
``access``          what one request reads and writes, resolved before any device work
``zarr_io``         bytes in and out of Zarr v3 arrays, by chunk ranges
``profiles``        named stores in ``stores/<name>.yaml``
``urls``            one spelling of a store URL
==================  ==================================================================
"""

from ..errors import StoreError, StoreKeyError
from .access import StorePlan, plan_store_access
from .buffer_store import CHUNK_BYTES, BufferStore, NamespaceView, open_store
from .namespaces import StoreAccessError, check_key, check_namespace, resolve_key, tenant_namespace
from .profiles import default_store_spec, list_profiles, load_profile, profile_dirs, resolve_store
from .versions import Version

__all__ = [
    "CHUNK_BYTES",
    "BufferStore",
    "NamespaceView",
    "StoreAccessError",
    "StoreError",
    "StoreKeyError",
    "StorePlan",
    "Version",
    "check_key",
    "check_namespace",
    "default_store_spec",
    "list_profiles",
    "load_profile",
    "open_store",
    "plan_store_access",
    "profile_dirs",
    "resolve_key",
    "resolve_store",
    "tenant_namespace",
]
