"""The request: an ordered list of kernels over the buffers they declare.

A :class:`Request` is immutable, hashable and cheap to pickle. It is validated when it is built,
so an invalid request never reaches a device; the inputs of a call are checked by
:meth:`Request.check_inputs` before anything is allocated. Calling a request
(``request(**inputs)``) runs it on the runtime of the current context
(:mod:`dask_kaas.request.call`), which is what makes ``client.submit(request, x=x)`` work.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any

import numpy as np

from .. import config
from ..errors import RequestError
from ..names import namespace_problem, show
from ..validators import check, is_int
from . import parse
from .call import current_runtime
from .identity import content_token, shape_token
from .inputs import check_call_inputs
from .specs import BufferSpec, KernelSpec


@dataclass(frozen=True)
class BufferRole:
    """How one request uses one buffer, derived from all its kernel arguments."""

    spec: BufferSpec
    first_io: str
    reads_first: bool  # its first use reads it: it needs data from the call, the cache or the store
    written: bool  # some kernel writes it
    temporary: bool  # some use is "t": device scratch, never loaded or returned


@dataclass(frozen=True, eq=True)
class Request:
    """An ordered list of kernels, run ``n_iter`` times over, with the buffers they declare.

    A request is data: immutable, hashable, cheap to pickle, and validated when
    it is built, so an invalid one never reaches a device. The buffers are those
    its kernels' arguments declare; how the kernels use each one decides its
    role (:attr:`inputs`, :attr:`outputs`, :attr:`temporaries`, :attr:`consts`).
    Calling it (``request(x=...)``) runs it on the runtime of the current
    context: the KaaS runtime of the Dask worker it is called on (so
    ``client.submit(request, x=x)`` and ``dask.delayed(request)(x=x)`` work), else
    one runtime per process (:func:`~dask_kaas.runtime.local_runtime`).

    Parameters
    ----------
    kernels : KernelSpec or sequence of KernelSpec
        The launches, in order (at least one; at most ``kaas.limits.kernels``).
        A buffer name used by several kernels must have the same
        :class:`BufferSpec` everywhere.
    n_iter : int, default 1
        How many times the whole list runs over; at most ``kaas.limits.n-iter``,
        and ``n_iter * len(kernels)`` at most ``kaas.limits.launches``.
    tenant : str, optional
        The namespace the request's store keys live in (letters, digits,
        ``_ . -``, not first; at most 128 characters). None: ``"default"``.
    deadline : float, optional
        Seconds from submission; the scheduler rejects the request with
        :class:`AdmissionRejected` when it predicts it cannot finish in time.

    Attributes
    ----------
    buffers : dict of str to BufferSpec
        Every buffer by name, in order of first use.
    inputs : tuple of str
        Buffers whose first use reads them: from the call, else the device
        cache (consts) or the store.
    outputs : tuple of str
        Buffers some kernel writes that are not temporaries: they come back to
        the caller, and those that are not ephemeral are also written to the store.
    footprint : int
        Device bytes the request pins while it runs.

    Raises
    ------
    RequestError
        For an empty or non-KernelSpec kernel list, limits exceeded, a bad
        ``n_iter``, tenant or deadline, a buffer used with two different specs,
        a const buffer some kernel writes, or an output persisted under a key
        with an ``offset``.

    See Also
    --------
    BufferSpec, KernelSpec, Literal
    dask_kaas.run_request : run a request on the current context's runtime.

    Examples
    --------
    >>> import numpy as np
    >>> from dask_kaas import BufferSpec, KernelSpec, Literal, Request
    >>> n = 4
    >>> x = BufferSpec("x", 4 * n, dtype="float32", ephemeral=True)
    >>> w = BufferSpec("w", 4 * n, key="model/w", const=True)
    >>> y = BufferSpec("y", 4 * n, dtype="float32", ephemeral=True)
    >>> req = Request([KernelSpec("builtin", "vadd", 1, 32, literals=[Literal("i", n)],
    ...                           arguments=[(x, "i"), (w, "i"), (y, "o")])], tenant="alice")
    >>> req
    Request(vadd, tenant='alice')
    >>> req.inputs, req.outputs, req.footprint
    (('x', 'w'), ('y',), 48)

    Called outside a Dask worker, a request runs on this process's own runtime
    (the host device where no GPU answers):

    >>> fill = Request(KernelSpec("builtin", "fill", 1, 32, literals=[Literal("i", n), Literal("f", 1.5)],
    ...                           arguments=[(y, "o")]))
    >>> fill()
    {'y': array([1.5, 1.5, 1.5, 1.5], dtype=float32)}
    """

    kernels: tuple[KernelSpec, ...]
    n_iter: int = 1
    tenant: str | None = None
    deadline: float | None = None
    _roles: dict = field(default=None, compare=False, hash=False, repr=False)  # type: ignore[arg-type]

    def __init__(
        self,
        kernels: KernelSpec | Sequence[KernelSpec],
        *,
        n_iter: int = 1,
        tenant: str | None = None,
        deadline: float | None = None,
    ) -> None:
        if isinstance(kernels, KernelSpec):
            kernels = (kernels,)
        if not isinstance(kernels, (tuple, list)):
            raise RequestError(f"kernels must be a sequence of KernelSpec, got {show(kernels)}")
        kernels = tuple(kernels)
        if not kernels:
            raise RequestError("a request needs at least one kernel")
        for k in kernels:
            if type(k) is not KernelSpec:
                raise RequestError(f"kernels must be KernelSpec objects, got {show(k)}")
        limits = config.get("limits")
        if len(kernels) > limits["kernels"]:
            raise RequestError(
                f"a request has {len(kernels)} kernels, more than kaas.limits.kernels ({limits['kernels']})"
            )
        if not is_int(n_iter) or n_iter < 1:
            raise RequestError(f"n_iter must be an integer >= 1, got {show(n_iter)}")
        if n_iter > limits["n-iter"] or n_iter * len(kernels) > limits["launches"]:
            raise RequestError(
                f"n_iter {n_iter} x {len(kernels)} kernels is beyond kaas.limits.n-iter "
                f"({limits['n-iter']}) or kaas.limits.launches ({limits['launches']})"
            )
        if isinstance(tenant, str):  # an exact str (numpy's str_ is a subclass): no subclass decides == for it
            tenant = str.__str__(tenant)
        if tenant is not None:
            check(namespace_problem(tenant, "tenant"))
        if deadline is not None and (
            isinstance(deadline, bool)
            or not isinstance(deadline, numbers.Real)
            or not math.isfinite(deadline)
            or deadline <= 0
        ):
            raise RequestError(f"deadline must be a positive number of seconds or None, got {show(deadline)}")
        _set_request_fields(self, kernels, int(n_iter), tenant, None if deadline is None else float(deadline))

    # -- derived views --------------------------------------------------------
    @cached_property
    def buffers(self) -> dict[str, BufferSpec]:
        """Every buffer by name, in order of first use."""
        return {name: role.spec for name, role in self._roles.items()}

    @property
    def roles(self) -> Mapping[str, BufferRole]:
        """How the request uses each buffer, by name (read only)."""
        return MappingProxyType(self._roles)

    @cached_property
    def inputs(self) -> tuple[str, ...]:
        """Buffers whose first use reads them: from the call, else the cache (const) or the store."""
        return tuple(n for n, r in self._roles.items() if r.reads_first and not r.temporary)

    @cached_property
    def outputs(self) -> tuple[str, ...]:
        """Buffers some kernel writes that are not temporaries: these come back to the caller."""
        return tuple(n for n, r in self._roles.items() if r.written and not r.temporary)

    @cached_property
    def temporaries(self) -> tuple[str, ...]:
        return tuple(n for n, r in self._roles.items() if r.temporary)

    @cached_property
    def consts(self) -> tuple[BufferSpec, ...]:
        return tuple(r.spec for r in self._roles.values() if r.spec.const)

    @cached_property
    def const_bytes(self) -> int:
        return sum(s.size for s in self.consts)

    @cached_property
    def footprint(self) -> int:
        """Device bytes the request pins while it runs."""
        return sum(r.spec.size for r in self._roles.values())

    @property
    def __name__(self) -> str:
        # Dask names tasks after their function: "kaas-sgemm-bias_relu-..." groups well on the dashboard.
        return "kaas-" + "-".join(dict.fromkeys(self.kernel_names))

    @cached_property
    def kernel_names(self) -> tuple[str, ...]:
        return tuple(k.kernel for k in self.kernels)

    # -- calling --------------------------------------------------------------
    def check_inputs(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Validate a call's inputs; return them as flat uint8 arrays by buffer name.

        An array must have the buffer's dtype when the buffer declares one (raw ``bytes`` and
        uint8 arrays are taken as the buffer's bytes); lists and scalars are converted to it.
        A runtime calls this before it allocates anything.

        Parameters
        ----------
        inputs : mapping of str to array-like
            Call inputs by buffer name: NumPy arrays, ``bytes``/``bytearray``/``memoryview``,
            lists or scalars. Each must name an input of the request (:attr:`inputs`) and
            hold exactly its ``size`` bytes.

        Returns
        -------
        dict of str to numpy.ndarray
            The inputs as contiguous 1-D uint8 arrays (views where possible), by buffer name.

        Raises
        ------
        RequestError
            For a name that is not a buffer of the request, a buffer that takes no input
            data (an output or a temporary), an object array, data of another dtype than
            the buffer declares, a wrong byte size, or a missing ephemeral input (it is in
            no store, so the call must pass it).

        Examples
        --------
        >>> import numpy as np
        >>> from dask_kaas import BufferSpec, KernelSpec, Literal, Request
        >>> x = BufferSpec("x", 16, dtype="float32", ephemeral=True)
        >>> w = BufferSpec("w", 16, key="model/w", const=True)
        >>> y = BufferSpec("y", 16, dtype="float32", ephemeral=True)
        >>> req = Request([KernelSpec("builtin", "vadd", 1, 32, literals=[Literal("i", 4)],
        ...                           arguments=[(x, "i"), (w, "i"), (y, "o")])], tenant="alice")
        >>> {name: raw.nbytes for name, raw in req.check_inputs({"x": np.ones(4, np.float32)}).items()}
        {'x': 16}
        >>> req.check_inputs({"x": np.ones(4)})
        Traceback (most recent call last):
        ...
        dask_kaas.errors.RequestError: input 'x': float64 data for a float32 buffer; convert it ...
        """
        return check_call_inputs(self._roles, self.inputs, inputs)

    def __call__(self, *args: Any, **inputs: Any) -> dict[str, np.ndarray]:
        """Run the request on the runtime of the current context; return its outputs.

        The runtime is the first answer of the resolvers in ``kaas.runtime-resolvers``: on a Dask
        worker with the KaaS plugin, that worker's runtime (so ``client.submit(request, x=x)`` runs
        there); on a Dask worker without it, an error; elsewhere this process's own runtime
        (:func:`~dask_kaas.runtime.local_runtime`: the ``kaas.device`` device and the default store).

        Data flow: inputs passed here are copied to the device; const buffers not passed come
        from the device cache (or, on a miss, the store); other inputs not passed are read from
        the store under their key in the tenant's namespace; outputs and temporaries start
        zeroed. Outputs that are not ephemeral are also written back to the store.

        Parameters
        ----------
        **inputs : array-like
            Call inputs by buffer name (see :meth:`check_inputs`). Positional arguments are an
            error: inputs are matched by name only.

        Returns
        -------
        dict of str to numpy.ndarray
            Every output by buffer name, viewed as its buffer's ``dtype`` and ``shape``
            (flat uint8 without them).

        Raises
        ------
        RequestError
            For positional arguments or bad inputs (:meth:`check_inputs`), a missing input
            whose key is not in the store, or a stored buffer that does not agree with its spec.
        KaasError
            When called on a Dask worker without the KaaS plugin, or no resolver gives a runtime.
        DeviceMemoryError
            When the request's buffers cannot fit the device even after eviction.
        KernelError
            When a kernel cannot be compiled, loaded or run (on the host device: it has no
            host twin).
        StoreError
            When the store cannot serve a read or write, or the tenant may not reach a key;
            :class:`StoreKeyError` for a const whose key is not in the store.

        See Also
        --------
        dask_kaas.run_request : the same with the inputs as a mapping.

        Examples
        --------
        >>> import numpy as np
        >>> from dask_kaas import BufferSpec, KernelSpec, Literal, Request
        >>> a, b, c = (BufferSpec(name, 16, dtype="float32", ephemeral=True) for name in "abc")
        >>> vadd = Request(KernelSpec("builtin", "vadd", 1, 32, literals=[Literal("i", 4)],
        ...                           arguments=[(a, "i"), (b, "i"), (c, "o")]))
        >>> vadd(a=np.arange(4, dtype=np.float32), b=np.ones(4, np.float32))
        {'c': array([1., 2., 3., 4.], dtype=float32)}
        >>> vadd(np.ones(4, np.float32))
        Traceback (most recent call last):
        ...
        dask_kaas.errors.RequestError: Request(vadd) takes its inputs by buffer name (a, b), ...
        """
        if args:
            raise RequestError(
                f"{self!r} takes its inputs by buffer name ({', '.join(self.inputs) or 'none'}), "
                f"e.g. client.submit(request, x=...); got {len(args)} positional argument(s)"
            )
        return current_runtime().run(self, inputs)

    # -- serialisation --------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The request as JSON-able data, which :meth:`from_dict` turns back into an equal request.

        Returns
        -------
        dict
            ``buffers`` (each :meth:`BufferSpec.to_dict`, in order of first use), ``kernels``
            (arguments by buffer name; a library object as its :meth:`~dask_kaas.Library.to_dict`),
            ``n_iter``, and ``tenant`` and ``deadline`` where set.

        See Also
        --------
        to_json, from_dict

        Examples
        --------
        >>> from dask_kaas import BufferSpec, KernelSpec, Literal, Request
        >>> x = BufferSpec("x", 16, dtype="float32", ephemeral=True)
        >>> w = BufferSpec("w", 16, key="model/w", const=True)
        >>> y = BufferSpec("y", 16, dtype="float32", ephemeral=True)
        >>> req = Request([KernelSpec("builtin", "vadd", 1, 32, literals=[Literal("i", 4)],
        ...                           arguments=[(x, "i"), (w, "i"), (y, "o")])], tenant="alice")
        >>> d = req.to_dict()
        >>> sorted(d), d["buffers"][1]
        (['buffers', 'kernels', 'n_iter', 'tenant'], {'name': 'w', 'size': 16, 'key': 'model/w', 'const': True})
        >>> d["kernels"][0]["arguments"]
        [['x', 'i'], ['w', 'i'], ['y', 'o']]
        >>> Request.from_dict(d) == req
        True
        """
        d = {
            "buffers": [spec.to_dict() for spec in self.buffers.values()],
            "kernels": [k.to_dict() for k in self.kernels],
            "n_iter": self.n_iter,
        }
        if self.tenant is not None:
            d["tenant"] = self.tenant
        if self.deadline is not None:
            d["deadline"] = self.deadline
        return d

    def to_json(self, **kwargs: Any) -> str:
        """:meth:`to_dict` as JSON text, which :meth:`from_json` reads back.

        Parameters
        ----------
        **kwargs
            Passed to :func:`json.dumps` (``indent=2``, say).

        Returns
        -------
        str

        Examples
        --------
        >>> from dask_kaas import BufferSpec, KernelSpec, Literal, Request
        >>> x = BufferSpec("x", 16, dtype="float32", ephemeral=True)
        >>> w = BufferSpec("w", 16, key="model/w", const=True)
        >>> y = BufferSpec("y", 16, dtype="float32", ephemeral=True)
        >>> req = Request([KernelSpec("builtin", "vadd", 1, 32, literals=[Literal("i", 4)],
        ...                           arguments=[(x, "i"), (w, "i"), (y, "o")])], tenant="alice")
        >>> text = req.to_json()
        >>> text[:40]
        '{"buffers": [{"name": "x", "size": 16, "'
        >>> Request.from_json(text) == req
        True
        """
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str | bytes | bytearray | memoryview) -> Request:
        """:meth:`from_dict` of a JSON text (either format), read as hostile input.

        Parameters
        ----------
        text : str or bytes-like
            JSON text (bytes must be UTF-8), at most 64 MiB.

        Returns
        -------
        Request

        Raises
        ------
        RequestError
            For text that is not a string or UTF-8 bytes, too long, not valid JSON, or nested too
            deeply, and anything :meth:`from_dict` refuses.

        Examples
        --------
        >>> from dask_kaas import Request
        >>> text = '''{"buffers": [{"name": "y", "size": 16, "ephemeral": true, "dtype": "float32"}],
        ...  "kernels": [{"library": "builtin", "kernel": "fill", "grid": [1], "block": [32],
        ...               "literals": [{"type": "i", "value": 4}, {"type": "f", "value": 2.0}],
        ...               "arguments": [["y", "o"]]}]}'''
        >>> req = Request.from_json(text)
        >>> req, req.outputs
        (Request(fill), ('y',))
        >>> Request.from_json("{not json")
        Traceback (most recent call last):
        ...
        dask_kaas.errors.RequestError: request: not valid JSON (...)
        """
        return parse.request_from_json(text, cls)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Request:
        """Build a request from :meth:`to_dict` output or from the original KaaS dict format.

        The dict is read as hostile input (:mod:`dask_kaas.request.parse`): anything malformed
        is a :class:`RequestError` naming the path of the bad field, and it can name no Python
        code and no file outside ``kaas.library-paths``.

        Parameters
        ----------
        d : mapping
            Ours: ``buffers`` (buffer dicts), ``kernels`` (``library``, ``kernel``, ``grid``,
            ``block``, ``shared``, ``literals``, ``arguments`` as ``[buffer name, io]``),
            ``n_iter``, ``tenant``, ``deadline``. The original KaaS format (no ``buffers``):
            kernels with ``arguments`` as buffer dicts plus ``type_list`` (their io codes),
            ``gridDim``, ``blockDim``, ``sharedSize``, literals as ``{type, val}``, and
            ``nIter``. A ``library`` is a registered name, a ``.cu``/``.cubin``/``.ptx``/``.fatbin``
            path inside a ``kaas.library-paths`` directory, or an inline library dict
            (:meth:`~dask_kaas.Library.from_dict`: CUDA source or a binary, no Python code).

        Returns
        -------
        Request

        Raises
        ------
        RequestError
            For anything malformed or beyond the limits (``kaas.limits.*``): unknown fields,
            a buffer declared twice with different specs, an argument naming no declared buffer,
            an unknown library or kernel, a library path outside ``kaas.library-paths``, and
            every rule of :class:`BufferSpec`, :class:`KernelSpec` and :class:`Request`. The
            message starts with the path of the bad field (``kernels[0].arguments[2]: ...``).

        Examples
        --------
        >>> from dask_kaas import Request
        >>> kaas = {"kernels": [{"library": "builtin", "kernel": "axpy",
        ...                      "arguments": [{"name": "x", "size": 40, "const": True, "key": "xs"},
        ...                                    {"name": "y", "size": 40, "ephemeral": True}],
        ...                      "type_list": ["i", "io"], "gridDim": [1, 1, 1], "blockDim": [32, 1, 1],
        ...                      "literals": [{"type": "i", "val": 10}, {"type": "f", "val": 2.0}]}],
        ...         "nIter": 4}
        >>> req = Request.from_dict(kaas)
        >>> req, req.inputs, req.outputs, req.buffers["x"].store_key
        (Request(axpy, n_iter=4), ('x', 'y'), ('y',), 'xs')
        >>> Request.from_dict(req.to_dict()) == req
        True
        >>> Request.from_dict({"kernels": [], "buffers": [], "bogus": 1})
        Traceback (most recent call last):
        ...
        dask_kaas.errors.RequestError: request: unknown field(s) ['bogus']; known: kernels, buffers, n_iter, ...
        """
        return parse.request_from_dict(d, cls)

    def __dask_tokenize__(self):
        return ("dask_kaas.Request", self.token)

    def __hash__(self) -> int:
        # computed once: a batcher keys its queues by request, on every call
        value = self.__dict__.get("_hash")
        if value is None:
            value = self.__dict__["_hash"] = hash((self.kernels, self.n_iter, self.tenant, self.deadline))
        return value

    @cached_property
    def shape_token(self) -> str:
        """Identifies requests that cost the same: same kernels, launch shapes, literals, buffer sizes and n_iter
        (not keys, names or tenant). The scheduler predicts runtimes per shape."""
        return shape_token(self)

    @cached_property
    def token(self) -> str:
        """A stable content hash (libraries by their own hash)."""

        return content_token(self)

    def __repr__(self):
        kernels = " -> ".join(self.kernel_names)
        tenant = f", tenant={self.tenant!r}" if self.tenant else ""
        n_iter = f", n_iter={self.n_iter}" if self.n_iter != 1 else ""
        return f"Request({kernels}{n_iter}{tenant})"

    # -- notebooks (dask_kaas.jupyter) ----------------------------------------
    def _repr_html_(self) -> str:
        from ..jupyter import request_html

        return request_html(self)

    def visualize(self, filename=None, format=None):
        """The kernel/buffer dataflow graph: a ``graphviz.Digraph`` where Graphviz works, else SVG."""
        from ..jupyter import visualize_request

        return visualize_request(self, filename=filename, format=format)

    def __reduce__(self):
        # Unpickling validates again (a pickle is bytes anyone can write: a tenant that is a str subclass,
        # limits exceeded); the shape token travels too, since the scheduler needs it at once.
        return (_rebuild_request, (self.kernels, self.n_iter, self.tenant, self.deadline, self.shape_token))


def _set_request_fields(req: Request, kernels, n_iter, tenant, deadline) -> None:
    set_ = object.__setattr__
    set_(req, "kernels", kernels)
    set_(req, "n_iter", n_iter)
    set_(req, "tenant", tenant)
    set_(req, "deadline", deadline)
    set_(req, "_roles", _derive_roles(kernels))


class InvalidRequest:
    """What a pickled Request that fails validation unpickles as (a pickle is bytes anyone can write):
    the scheduler refuses its task with :attr:`error`, and calling it raises that error. Raising
    while unpickling instead would fail the whole graph with Dask's generic deserialization error."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __call__(self, *args, **kwargs):
        raise self.error

    def __reduce__(self):
        return InvalidRequest, (self.error,)

    def __repr__(self) -> str:
        return f"InvalidRequest({self.error})"


def _rebuild_request(kernels, n_iter, tenant, deadline=None, shape_token=None):
    try:
        req = Request(kernels, n_iter=n_iter, tenant=tenant, deadline=deadline)
    except (RequestError, TypeError, ValueError) as e:
        return InvalidRequest(e if isinstance(e, RequestError) else RequestError(f"invalid request: {e}"))
    if type(shape_token) is str:
        req.__dict__["shape_token"] = shape_token
    return req


def _derive_roles(kernels: Sequence[KernelSpec]) -> dict[str, BufferRole]:
    specs: dict[str, BufferSpec] = {}
    uses: dict[str, list[str]] = {}
    for k in kernels:
        for buf, io in k.arguments:
            known = specs.get(buf.name)
            if known is None:
                specs[buf.name] = buf
                uses[buf.name] = []
            elif known != buf:
                raise RequestError(
                    f"kernel {k.kernel!r}: buffer {buf.name!r} is used with two different specs: {known} and {buf}"
                )
            uses[buf.name].append(io)
    roles = {}
    for name, spec in specs.items():
        ios = uses[name]
        temporary = "t" in ios
        written = any(io in ("o", "io") for io in ios)
        if spec.const and (written or temporary):
            raise RequestError(f"buffer {name!r} is const but a kernel writes it (io {'/'.join(ios)})")
        if written and not temporary and not spec.ephemeral and spec.offset:
            raise RequestError(
                f"buffer {name!r} is an output persisted under key {spec.store_key!r}, so it cannot have an offset "
                f"({spec.offset}); make it ephemeral or drop the offset"
            )
        roles[name] = BufferRole(spec, ios[0], ios[0] in ("i", "io"), written, temporary)
    return roles
