"""A tenant's request is hostile input: it names no Python code, reaches no other tenant's kernels,
and no string, size or shape in it gets anything but a RequestError naming the bad field.

The fuzz tests are bounded and derandomized: the same examples on every run.
"""

import json
import math

import numpy as np
import pytest
from helpers import kaas_dict

pytest.importorskip("hypothesis")  # a test-only dependency: without it the module skips, never errors
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dask_kaas import BufferSpec, KernelSpec, Library, Literal, Request, RequestError
from dask_kaas.device import HostDevice
from dask_kaas.kernels import builtin
from dask_kaas.runtime import Runtime
from dask_kaas.store import BufferStore

N = 16


def valid_dict():
    x = BufferSpec("x", 4 * N, dtype="float32", ephemeral=True)
    y = BufferSpec("y", 4 * N, dtype="float32", ephemeral=True)
    return Request(
        [KernelSpec("builtin", "axpy", 1, 32, literals=[("i", N), ("f", 2.0)], arguments=[(x, "i"), (y, "io")])],
        n_iter=2,
        tenant="alice",
    ).to_dict()


EVIL_SOURCE = 'extern "C" __global__ void k(int n, float* y) {}'


def evil_library(twin):
    return {"name": "evil", "kind": "source", "source": EVIL_SOURCE, "twins": {"k": twin}}


# ------------------------------------------------------------------ no Python code in a request
@pytest.mark.parametrize(
    "twin",
    [
        "sys:exit",
        "builtins:print",
        "os:system",
        "subprocess:run",
        "dask_kaas.kernels.twins:np",  # a module reached through an allowed one
        "dask_kaas.kernels.twins:_need",  # private
        "dask_kaas.kernels.twins:fill.__globals__",
        "dask_kaas.kernels.twins:nope",
        "no_such_module:x",
        "justaname",
    ],
)
def test_a_request_cannot_name_python_code(twin):
    with pytest.raises(RequestError, match=r"(not allowed|not a function defined)"):
        Library.from_dict(evil_library(twin))
    d = valid_dict()
    d["kernels"][0]["library"] = evil_library(twin)
    d["kernels"][0]["kernel"] = "k"
    with pytest.raises(RequestError, match=r"kernels\[0\]\.library: .*(not allowed|not a function defined)"):
        Request.from_dict(d)


def test_twins_from_an_allowed_module_are_taken():
    lib = Library.from_dict(evil_library("dask_kaas.kernels.twins:fill"))
    assert lib.twin("k") is builtin.twin("fill")
    import dask

    with dask.config.set({"kaas.twins.allowed-modules": []}):
        with pytest.raises(RequestError, match=r"kaas.twins.allowed-modules"):
            Library.from_dict(evil_library("dask_kaas.kernels.twins:fill"))


@pytest.mark.parametrize(
    "options, ok",
    [
        (["-DN=4", "--use_fast_math", "-lineinfo", "--std=c++17", "--maxrregcount=64"], True),
        (["-I/etc"], False),
        (["--include-path=/root"], False),
        (["--pre-include=/etc/passwd"], False),
        (["-include", "/etc/passwd"], False),
        (["--dopt=on; rm -rf /"], False),
        ([1], False),
        ("-DX", False),
    ],
)
def test_nvrtc_options_in_a_request_are_code_generation_only(options, ok):
    d = {"name": "opts", "source": EVIL_SOURCE, "options": options}
    if ok:
        assert Library.from_dict(d).options == tuple(options)
    else:
        with pytest.raises(RequestError, match=r"(not allowed|options must be)"):
            Library.from_dict(d)


@pytest.mark.parametrize(
    "include, ok",
    [
        ("<cuda_fp16.h>", True),
        ("<cuda/std/cstdint>", False),
        ('"/etc/passwd"', False),
        ("<../../etc/passwd>", False),
        ('"local.h"', False),
    ],
)
def test_a_requests_source_includes_only_nvrtc_headers(include, ok):
    d = {"name": "inc", "source": f"#include {include}\n{EVIL_SOURCE}"}
    if ok:
        Library.from_dict(d)
    else:
        with pytest.raises(RequestError, match=r"#include .* is not allowed"):
            Library.from_dict(d)


def test_a_library_path_must_be_allowed(tmp_path):
    import dask

    (tmp_path / "k.cu").write_text(EVIL_SOURCE)
    d = valid_dict()
    d["kernels"][0]["library"] = str(tmp_path / "k.cu")
    with pytest.raises(RequestError, match=r"kernels\[0\]\.library: .*not inside a directory of kaas.library-paths"):
        Request.from_dict(d)
    d["kernels"][0]["library"] = "/etc/passwd.cu"
    with pytest.raises(RequestError, match=r"kaas.library-paths"):
        Request.from_dict(d)
    with dask.config.set({"kaas.library-paths": [str(tmp_path)]}):
        d["kernels"][0].update(library=str(tmp_path / "k.cu"), kernel="k", literals=[["i", 1]], arguments=[["y", "o"]])
        assert Request.from_dict(d).kernels[0].kernel == "k"
        d["kernels"][0]["library"] = str(tmp_path / ".." / "k.cu")
        with pytest.raises(RequestError, match=r"kaas.library-paths"):
            Request.from_dict(d)


def test_a_dicts_path_is_never_read(tmp_path):
    ptx = b".visible .entry k(\n)\n{\nret;\n}\n"
    (tmp_path / "k.ptx").write_bytes(ptx)
    d = Library.from_file(tmp_path / "k.ptx", signatures={"k": ""}).to_dict()
    d["path"] = "/etc/shadow"
    lib = Library.from_dict(d)
    assert lib.path is None and lib.binary("sm_90") == (ptx, "ptx")


# ------------------------------------------------------------------ one tenant cannot change another's kernels
def test_library_identity_covers_everything_that_changes_execution():
    a = Library.from_source("same", EVIL_SOURCE, twins={"k": lambda launch, n, y: y.fill(1)})
    b = Library.from_source("same", EVIL_SOURCE, twins={"k": lambda launch, n, y: y.fill(2)})
    c = Library.from_source("same", EVIL_SOURCE, constraints={"k": {"max_block": 32}})
    d = Library.from_source("same", EVIL_SOURCE, signatures={"k": "int n, float* y"})
    assert len({a.hash, b.hash, c.hash, d.hash, Library.from_source("same", EVIL_SOURCE).hash}) == 5
    assert a.content_hash == b.content_hash  # the same compiled binary serves both


def test_a_library_sent_in_a_request_is_private_to_its_tenant(tmp_path):
    y = BufferSpec("y", 4, dtype="float32", ephemeral=True)

    def request(lib, tenant):
        return Request([KernelSpec(lib, "k", 1, 1, literals=[Literal("i", 1)], arguments=[(y, "o")])], tenant=tenant)

    alices = Library.from_source("lib", EVIL_SOURCE, twins={"k": lambda launch, n, y: y.fill(1)})
    mallorys = Library.from_source("lib", EVIL_SOURCE, twins={"k": lambda launch, n, y: y.fill(666)})
    runtime = Runtime(HostDevice(2**20), BufferStore(f"file://{tmp_path}"))
    assert runtime.run(request(alices, "alice"))["y"][0] == 1
    assert runtime.run(request(mallorys, "mallory"))["y"][0] == 666
    for _ in range(3):
        assert runtime.run(request(alices, "alice"))["y"][0] == 1
    assert runtime.run(request(alices, "mallory"))["y"][0] == 1  # the same library, loaded for mallory
    owners = sorted(str(owner) for owner, _ in runtime.kernels.keys())
    assert owners == ["alice", "mallory", "mallory"]
    runtime.run(
        Request(
            [KernelSpec("builtin", "fill", 1, 1, literals=[Literal("i", 1), Literal("f", 2.0)], arguments=[(y, "o")])],
            tenant="alice",
        )
    )
    assert (None, builtin) in runtime.kernels.keys()  # registered libraries are shared


# ------------------------------------------------------------------ names, sizes, bounds
@pytest.mark.parametrize("tenant", ["\ud800", "a" * 129, "../etc", "a/b", "", "-x", "a\nb", 5, ["alice"]])
def test_bad_tenants(tenant):
    with pytest.raises(RequestError, match="tenant"):
        Request.from_dict({**valid_dict(), "tenant": tenant})


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("name", "\udfff", "lone surrogate"),
        ("name", "x" * 300, "more than 256"),
        ("name", "a\x00b", "control"),
        ("key", "k\ud800", "lone surrogate"),
        ("key", "../../x", "segments"),
        ("key", "ns/../:k", "namespace"),
        ("size", 2**60, "at most 2\\*\\*48"),
        ("size", -4, "positive"),
        ("size", "64", "positive"),
        ("offset", -1, "offset"),
        ("dtype", "f4," * 1000, "unknown dtype"),
        ("dtype", "object", "plain"),
        ("dtype", {"names": ["a"], "formats": ["f4"], "offsets": [-1]}, "dtype"),
        ("dtype", "V8", "plain"),
        ("shape", [[2]], "shape"),
        ("shape", [1] * 40, "at most 32"),
        ("ephemeral", [1, 2], "true or false"),
        ("const", "yes", "true or false"),
    ],
)
def test_bad_buffer_fields(field, value, match):
    d = valid_dict()
    d["buffers"][0][field] = value
    with pytest.raises(RequestError, match=rf"buffers\[0\]: .*{match}"):
        Request.from_dict(d)


def test_n_iter_and_sizes_are_bounded():
    import dask

    with pytest.raises(RequestError, match=r"kaas.limits.n-iter"):
        Request.from_dict({**valid_dict(), "n_iter": 2**40})
    with dask.config.set({"kaas.limits.n-iter": 10}):
        with pytest.raises(RequestError, match=r"n_iter 11 .*kaas.limits.n-iter \(10\)"):
            Request.from_dict({**valid_dict(), "n_iter": 11})
    d = valid_dict()
    d["kernels"] = d["kernels"] * 5000
    with pytest.raises(RequestError, match="kernels: 5000 entries, more than 4096"):
        Request.from_dict(d)


def test_a_buffer_declared_twice_differently_is_an_error():
    d = valid_dict()
    d["buffers"].append({**d["buffers"][0], "size": 8})
    with pytest.raises(RequestError, match=r"buffers\[2\]: buffer 'x' is declared twice with different specs"):
        Request.from_dict(d)
    d = valid_dict()
    d["buffers"].append(dict(d["buffers"][0]))  # the same spec twice is harmless
    assert Request.from_dict(d) == Request.from_dict(valid_dict())


@pytest.mark.parametrize(
    "mutate, path",
    [
        (lambda d: d.update(kernels=["x"]), r"kernels\[0\]: expected an object"),
        (lambda d: d.update(kernels=5), r"kernels: expected a list"),
        (lambda d: d["kernels"][0].update(arguments=[["y", "o", "extra"]]), r"kernels\[0\]\.arguments\[0\]"),
        (lambda d: d["kernels"][0].update(arguments=5), r"kernels\[0\]\.arguments: expected a list"),
        (
            lambda d: d["kernels"][0].update(literals=[{"type": ["i"], "val": 4}, ["f", 1.0]]),
            r"kernels\[0\]\.literals: unknown literal type \['i'\]",
        ),
        (lambda d: d["kernels"][0].update(grid=[[[[[[[[1]]]]]]]]), r"kernels\[0\]: kernel 'axpy': grid"),
        (lambda d: d["kernels"][0].update(library=["builtin"]), r"kernels\[0\]\.library: expected a library"),
        (lambda d: d["kernels"][0].update(library="nosuch"), r"kernels\[0\]\.library: unknown kernel library"),
        (lambda d: d["kernels"][0].update(kernel="x; rm"), r"kernels\[0\]: kernel name must be a C identifier"),
        (lambda d: d["kernels"][0].update(shared=2.5), r"kernels\[0\]: kernel 'axpy': shared memory"),
        (lambda d: d["kernels"][0].update(block=[2048]), r"kernels\[0\]: kernel 'axpy': block"),
        (lambda d: d.update(extra=1), r"request: unknown field\(s\) \['extra'\]"),
        (lambda d: d["kernels"][0].update(gird=[1]), r"kernels\[0\]: unknown field\(s\) \['gird'\]"),
        (lambda d: d.update(deadline="soon"), r"request: deadline"),
        (lambda d: d.update(buffers={"x": 1}), r"buffers: expected a list"),
        (lambda d: d["buffers"].__setitem__(0, 7), r"buffers\[0\]: a buffer must be a mapping"),
    ],
)
def test_malformed_fields_are_named_by_path(mutate, path):
    d = valid_dict()
    mutate(d)
    with pytest.raises(RequestError, match=path):
        Request.from_dict(d)


def test_original_kaas_format_errors_are_named_by_path():
    d = kaas_dict()
    d["kernels"][0]["type_list"] = ["i"]
    with pytest.raises(RequestError, match=r"kernels\[0\]: 2 arguments but 1 entries in type_list"):
        Request.from_dict(d)
    d = kaas_dict()
    d["kernels"][0]["arguments"][1] = {"name": "y"}
    with pytest.raises(RequestError, match=r"kernels\[0\]\.arguments\[1\]: a buffer must be a mapping"):
        Request.from_dict(d)
    assert Request.from_dict(kaas_dict()).n_iter == 2


@pytest.mark.parametrize(
    "text",
    [
        '{"kernels": ' + "[" * 5000 + "]" * 5000 + "}",
        "{",
        "[1, 2]",
        "1" * 5000,
        b"\xff\xfe{}",
        '{"kernels": []}',
        '{"kernels": [], "buffers": []}',
    ],
)
def test_bad_json(text):
    with pytest.raises(RequestError) as info:
        Request.from_json(text)
    assert len(str(info.value)) < 400


def test_messages_never_echo_unbounded_input():
    d = valid_dict()
    d["buffers"][0]["name"] = "A" * 100_000
    with pytest.raises(RequestError) as info:
        Request.from_dict(d)
    assert len(str(info.value)) < 400
    d = valid_dict()
    d["kernels"][0]["grid"] = [[[[[[[[[[[[[[1]]]]]]]]]]]]]] * 3
    with pytest.raises(RequestError) as info:
        Request.from_dict(d)
    assert len(str(info.value)) < 400
    with pytest.raises(RequestError) as info:
        Literal("i", 10**10000)
    assert len(str(info.value)) < 400


@pytest.mark.parametrize(
    "value", [range(10**12), [range(10**12)], [[0.0] * N] * 10**6, [np.zeros(10**6)], [[[0.0] * 4] * 4] * 2]
)
def test_call_inputs_are_counted_before_they_are_converted(value):
    """An input that would become more elements than its buffer holds is refused before NumPy converts it:
    a range of 10**12 is a few bytes until it is an array (a MemoryError, or minutes of a worker's CPU)."""
    r = Request.from_dict(valid_dict())
    with pytest.raises(RequestError, match=r"input 'x': more elements than buffer 'x' holds \(64 bytes of float32\)"):
        r.check_inputs({"x": value, "y": np.zeros(N, np.float32)})
    ok = r.check_inputs({"x": [[0.0] * 4] * 4, "y": np.zeros(N, np.float32)})  # exactly its elements, nested
    assert ok["x"].nbytes == 4 * N


def test_positional_inputs_get_a_request_error():
    r = Request.from_dict(valid_dict())
    with pytest.raises(RequestError, match=r"takes its inputs by buffer name \(x, y\)"):
        r(np.zeros(N, np.float32))


# ------------------------------------------------------------------ fuzzing
json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["i", "f", "o", "io", "t", "x", "y", "builtin", "axpy", "float32", "\ud800", "name", "size"]),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


def _replace(obj, path, value):
    if not path:
        return value
    parent = obj
    for p in path[:-1]:
        parent = parent[p]
    parent[path[-1]] = value
    return obj


def _assert_only_request_errors(d):
    try:
        r = Request.from_dict(d)
    except RequestError as e:
        assert len(str(e)) < 1000, str(e)[:200]
        return
    assert isinstance(r, Request)
    json.dumps(r.to_dict())  # what parses, serializes back


FUZZ = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.mark.slow
@FUZZ
@given(data=st.data(), base=st.sampled_from(["ours", "kaas"]))
def test_fuzzed_mutations_of_valid_requests(data, base):
    d = valid_dict() if base == "ours" else kaas_dict()
    for _ in range(data.draw(st.integers(1, 3))):
        paths = list(_paths(d))
        path = data.draw(st.sampled_from(paths))
        d = _replace(d, path, data.draw(json_value))
    _assert_only_request_errors(d)


@FUZZ
@given(
    d=st.dictionaries(
        st.sampled_from(["kernels", "buffers", "n_iter", "nIter", "tenant", "deadline"]), json_value, max_size=5
    )
)
@pytest.mark.slow
def test_fuzzed_top_level_dicts(d):
    _assert_only_request_errors(d)


@FUZZ
@given(text=st.text(max_size=200))
def test_fuzzed_json_text(text):
    try:
        Request.from_json(text)
    except RequestError:
        pass


def test_limits_are_sane():
    import dask_kaas.config as config

    limits = config.get("limits")
    assert limits["launches"] >= limits["n-iter"] and math.isfinite(limits["kernels"])


# ------------------------------------------------------------------ no string takes a worker down
def test_sendable_reports():
    from dask_kaas.plugins.worker import sendable

    out = sendable({"tenant": "\ud800", "kernels": ("k\udfff",), "n": 3, "\ud800": [1.5, None]})
    json.dumps(out).encode("utf-8")
    out["tenant"].encode("utf-8")
    assert out["n"] == 3 and out["kernels"][0].startswith("k")


def test_a_request_built_around_validation_cannot_take_the_cluster_down(cluster):
    """What a pickling client could send: a lone-surrogate tenant that no constructor accepts."""
    import os

    from distributed import Client

    from dask_kaas.request.model import _set_request_fields

    good = Request.from_dict(valid_dict())
    bad = object.__new__(Request)  # around the constructor; unpickling it validates again
    _set_request_fields(bad, good.kernels, 1, "\ud800", None)
    x = np.ones(N, np.float32)
    with Client(cluster) as client:
        pids = client.run(os.getpid)
        for _ in range(3):
            with pytest.raises(RequestError, match="lone surrogate"):
                client.submit(bad, x=x, y=x, pure=False).result(timeout=30)
        out = client.submit(good, x=x, y=x, pure=False).result(timeout=30)
        np.testing.assert_allclose(out["y"], 1 + 2 * 2.0 * x)
        assert client.run(os.getpid) == pids  # no worker died or restarted
