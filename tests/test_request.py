"""The request model: construction, validation rules, dict/JSON round trips, the original KaaS format."""

import json
import pickle

import numpy as np
import pytest

import dask_kaas
from dask_kaas import BufferSpec, KaasError, KernelSpec, Literal, Request, RequestError

N = 100


def vadd_request(n=N, *, tenant=None, n_iter=1, const_b=False):
    a = BufferSpec("a", 4 * n, dtype="float32")
    b = BufferSpec("b", 4 * n, dtype="float32", const=const_b)
    c = BufferSpec("c", 4 * n, dtype="float32", ephemeral=True)
    k = KernelSpec(
        "builtin", "vadd", (1,), (128,), literals=[Literal("i", n)], arguments=[(a, "i"), (b, "i"), (c, "o")]
    )
    return Request([k], n_iter=n_iter, tenant=tenant)


def test_exports_and_hierarchy():
    for name in (
        "BufferSpec",
        "KernelSpec",
        "Literal",
        "Request",
        "builtin",
        "KaasError",
        "RequestError",
        "KernelError",
        "DeviceMemoryError",
        "StoreError",
    ):
        assert hasattr(dask_kaas, name)
    for err in (dask_kaas.RequestError, dask_kaas.KernelError, dask_kaas.DeviceMemoryError, dask_kaas.StoreError):
        assert issubclass(err, KaasError)


def test_roles_and_derived_views():
    r = vadd_request(const_b=True)
    assert r.inputs == ("a", "b")
    assert r.outputs == ("c",)
    assert r.temporaries == ()
    assert r.const_bytes == 4 * N
    assert r.footprint == 3 * 4 * N
    assert [s.name for s in r.consts] == ["b"]
    assert r.kernel_names == ("vadd",)
    assert r.__name__ == "kaas-vadd"


def test_requests_are_hashable_equal_and_pickle():
    r1, r2 = vadd_request(), vadd_request()
    assert r1 == r2 and hash(r1) == hash(r2)
    assert r1 != vadd_request(tenant="t")
    assert len({r1, r2}) == 1
    r3 = pickle.loads(pickle.dumps(r1))
    assert r3 == r1 and r3.inputs == r1.inputs
    assert len(pickle.dumps(r1)) < 2000


def test_dask_tokenize_is_deterministic():
    from dask.base import tokenize

    assert tokenize(vadd_request()) == tokenize(vadd_request())
    assert tokenize(vadd_request()) != tokenize(vadd_request(n_iter=2))


def test_json_round_trip():
    r = vadd_request(tenant="alice", n_iter=3, const_b=True)
    text = json.dumps(r.to_dict())
    back = Request.from_dict(json.loads(text))
    assert back == r
    assert Request.from_json(r.to_json()) == r
    assert back.buffers["a"].dtype == np.dtype("float32").str


def test_original_kaas_format():
    d = {
        "kernels": [
            {
                "library": "builtin",
                "kernel": "axpy",
                "arguments": [
                    {"name": "x", "size": 40, "ephemeral": False, "const": True, "key": "xs", "offset": 0},
                    {"name": "y", "size": 40, "ephemeral": True, "const": False},
                ],
                "type_list": ["i", "io"],
                "gridDim": [1, 1, 1],
                "blockDim": [32, 1, 1],
                "sharedSize": 0,
                "literals": [{"type": "i", "val": 10}, {"type": "f", "val": 2.0}],
            }
        ],
        "nIter": 4,
    }
    r = Request.from_dict(d)
    assert r.n_iter == 4
    k = r.kernels[0]
    assert k.grid == (1, 1, 1) and k.block == (32, 1, 1)
    assert [lit.type for lit in k.literals] == ["i", "f"]
    assert r.buffers["x"].const and r.buffers["x"].store_key == "xs"
    assert r.inputs == ("x", "y") and r.outputs == ("y",)
    # and it survives our own format too
    assert Request.from_dict(json.loads(r.to_json())) == r


def test_kaas_format_type_list_length_mismatch():
    d = {
        "kernels": [
            {
                "library": "builtin",
                "kernel": "fill",
                "arguments": [{"name": "y", "size": 4}],
                "type_list": [],
                "gridDim": [1],
                "blockDim": [1],
                "literals": [{"type": "i", "val": 1}, {"type": "f", "val": 0.0}],
            }
        ]
    }
    with pytest.raises(RequestError, match="type_list"):
        Request.from_dict(d)


# ------------------------------------------------------------ every rule fails
def test_same_name_two_specs():
    a1 = BufferSpec("a", 400)
    a2 = BufferSpec("a", 800)
    c = BufferSpec("c", 400)
    k1 = KernelSpec("builtin", "vadd", 1, 32, literals=[Literal("i", 100)], arguments=[(a1, "i"), (a1, "i"), (c, "o")])
    k2 = KernelSpec("builtin", "vadd", 1, 32, literals=[Literal("i", 100)], arguments=[(a2, "i"), (c, "i"), (c, "o")])
    with pytest.raises(RequestError, match=r"kernel 'vadd'.*buffer 'a'.*two different specs"):
        Request([k1, k2])


@pytest.mark.parametrize("size", [0, -4, 2.5, "8", True, None])
def test_bad_sizes(size):
    with pytest.raises(RequestError, match=r"buffer 'x'.*size"):
        BufferSpec("x", size)


def test_dtype_shape_disagree_with_size():
    with pytest.raises(RequestError, match=r"buffer 'x'.*shape \(3, 4\).*48 bytes.*size is 40"):
        BufferSpec("x", 40, dtype="float32", shape=(3, 4))
    with pytest.raises(RequestError, match=r"buffer 'x'.*not a multiple"):
        BufferSpec("x", 10, dtype="float32")
    with pytest.raises(RequestError, match=r"buffer 'x'.*unknown dtype"):
        BufferSpec("x", 8, dtype="notatype")
    with pytest.raises(RequestError, match=r"buffer 'x'.*shape"):
        BufferSpec("x", 8, shape=(2, -4))
    assert BufferSpec("x", 48, dtype="float32", shape=(3, 4)).shape == (3, 4)


def test_bad_buffer_fields():
    with pytest.raises(RequestError, match="name"):
        BufferSpec("", 4)
    with pytest.raises(RequestError, match=r"buffer 'x'.*offset"):
        BufferSpec("x", 4, offset=-1)
    with pytest.raises(RequestError, match=r"buffer 'x'.*both const.*ephemeral"):
        BufferSpec("x", 4, const=True, ephemeral=True)


def test_unknown_io_code():
    with pytest.raises(RequestError, match=r"kernel 'fill'.*buffer 'y'.*unknown io code 'rw'"):
        KernelSpec(
            "builtin",
            "fill",
            1,
            32,
            literals=[Literal("i", 1), Literal("f", 1.0)],
            arguments=[(BufferSpec("y", 4), "rw")],
        )


def test_unknown_literal_type():
    with pytest.raises(RequestError, match="unknown literal type 'z'"):
        Literal("z", 1)
    with pytest.raises(RequestError, match=r"kernel 'fill'.*unknown literal type 'h'"):
        KernelSpec("builtin", "fill", 1, 32, literals=[("h", 1), ("f", 1.0)], arguments=[(BufferSpec("y", 4), "o")])


@pytest.mark.parametrize(
    "code,value",
    [
        ("i", 2**31),
        ("i", -(2**31) - 1),
        ("I", -1),
        ("I", 2**32),
        ("q", 2**63),
        ("Q", -1),
        ("Q", 2**64),
        ("f", 1e39),
        ("f", -1e39),
        ("i", 1.5),
        ("i", True),
        ("f", "1.0"),
    ],
)
def test_literal_out_of_range_or_wrong_type(code, value):
    with pytest.raises(RequestError, match="literal"):
        Literal(code, value)


def test_literal_edges_are_fine():
    assert Literal("i", 2**31 - 1).numpy() == np.int32(2**31 - 1)
    assert Literal("Q", 2**64 - 1).numpy() == np.uint64(2**64 - 1)
    assert Literal("f", float("inf")).value == float("inf")
    assert Literal("d", 1e300).value == 1e300


@pytest.mark.parametrize("dims", [(), (1, 2, 3, 4), (0,), (-1,), (1.5,), "12", None, (2**31,)])
def test_bad_grid(dims):
    with pytest.raises(RequestError, match=r"kernel 'fill'.*grid"):
        KernelSpec("builtin", "fill", dims, 32, literals=[("i", 1), ("f", 1.0)], arguments=[(BufferSpec("y", 4), "o")])


@pytest.mark.parametrize("dims", [(), (0,), (2048,), (32, 64), (1, 1, 65)])
def test_bad_block(dims):
    with pytest.raises(RequestError, match=r"kernel 'fill'.*block"):
        KernelSpec("builtin", "fill", 1, dims, literals=[("i", 1), ("f", 1.0)], arguments=[(BufferSpec("y", 4), "o")])


def test_bad_shared():
    with pytest.raises(RequestError, match=r"kernel 'fill'.*shared"):
        KernelSpec(
            "builtin", "fill", 1, 32, shared=-1, literals=[("i", 1), ("f", 1.0)], arguments=[(BufferSpec("y", 4), "o")]
        )


@pytest.mark.parametrize("n_iter", [0, -1, 1.5, "2", None])
def test_bad_n_iter(n_iter):
    k = vadd_request().kernels
    with pytest.raises(RequestError, match="n_iter"):
        Request(k, n_iter=n_iter)


def test_unknown_library_and_kernel():
    y = BufferSpec("y", 4)
    with pytest.raises(RequestError, match="unknown kernel library 'nosuchlib'"):
        KernelSpec("nosuchlib", "fill", 1, 32, arguments=[(y, "o")])
    with pytest.raises(RequestError, match="unknown kernel 'nosuchkernel' in library 'builtin'"):
        KernelSpec("builtin", "nosuchkernel", 1, 32, arguments=[(y, "o")])
    with pytest.raises(RequestError, match=r"no/such/file.cubin"):
        KernelSpec("no/such/file.cubin", "k", 1, 32, arguments=[(y, "o")])


def test_arguments_must_match_the_kernel_signature():
    y = BufferSpec("y", 4)
    with pytest.raises(RequestError, match=r"kernel 'fill'.*literals have types i.*takes if"):
        KernelSpec("builtin", "fill", 1, 32, literals=[("i", 1)], arguments=[(y, "o")])
    with pytest.raises(RequestError, match=r"kernel 'fill'.*2 buffer arguments given.*takes 1"):
        KernelSpec("builtin", "fill", 1, 32, literals=[("i", 1), ("f", 1.0)], arguments=[(y, "o"), (y, "o")])
    with pytest.raises(RequestError, match="sgemm"):
        KernelSpec(
            "builtin",
            "sgemm",
            1,
            (8, 8),
            literals=[("i", 1)] * 3,
            arguments=[(BufferSpec(n, 4), io) for n, io in (("A", "i"), ("B", "i"), ("C", "o"))],
        )


def test_pointer_before_scalar_is_rejected():
    """On CUDA the int would land in the pointer's slot (literals go first): an illegal address."""
    from dask_kaas import Library

    lib = Library.from_source(
        "ptrfirst",
        'extern "C" __global__ void k(float* y, int n) { y[0] = n; }',
        twins={"k": lambda launch, n, y: None},
    )
    y = BufferSpec("y", 4)
    with pytest.raises(
        RequestError,
        match=r"kernel 'k' of library 'ptrfirst'.*pointer before a scalar"
        r".*float\* y, int n.*literals first",
    ):
        KernelSpec(lib, "k", 1, 1, literals=[("i", 1)], arguments=[(y, "o")])


def test_const_buffer_cannot_be_written():
    w = BufferSpec("w", 4, const=True)
    with pytest.raises(RequestError, match=r"buffer 'w' is const but a kernel writes it"):
        Request([KernelSpec("builtin", "fill", 1, 32, literals=[("i", 1), ("f", 1.0)], arguments=[(w, "o")])])


def test_empty_request_and_bad_tenant():
    with pytest.raises(RequestError, match="at least one kernel"):
        Request([])
    with pytest.raises(RequestError, match="tenant"):
        vadd_request(tenant="")
    with pytest.raises(RequestError, match="KernelSpec"):
        Request(["not a kernel"])


# ------------------------------------------------------------- call inputs
def test_check_inputs_accepts_right_sizes_and_bytes():
    r = vadd_request()
    x = np.ones(N, np.float32)
    got = r.check_inputs({"a": x, "b": x.tobytes()})
    assert got["a"].dtype == np.uint8 and got["a"].nbytes == 4 * N
    assert got["b"].nbytes == 4 * N


def test_input_byte_size_differs():
    r = vadd_request()
    with pytest.raises(RequestError, match=r"input 'a': 800 bytes given, buffer 'a' is declared with size 400"):
        r.check_inputs({"a": np.ones(2 * N, np.float32)})


def test_input_of_another_dtype_is_not_reinterpreted():
    r = vadd_request()
    with pytest.raises(RequestError, match=r"input 'a': float64 data for a float32 buffer.*astype\('float32'\)"):
        r.check_inputs({"a": np.ones(N // 2, np.float64)})  # the right byte count, the wrong type
    got = r.check_inputs({"a": np.ones(4 * N, np.uint8), "b": [1.5] * N})  # raw bytes; a list takes the dtype
    assert got["b"].view(np.float32)[0] == 1.5 and got["a"].nbytes == 4 * N


def test_input_that_is_not_a_buffer_or_not_an_input():
    r = vadd_request()
    with pytest.raises(RequestError, match="input 'zz' is not a buffer"):
        r.check_inputs({"zz": np.ones(1)})
    with pytest.raises(RequestError, match=r"input 'c'.*output"):
        r.check_inputs({"c": np.ones(N, np.float32)})


def test_missing_ephemeral_input():
    x = BufferSpec("x", 40, ephemeral=True)
    y = BufferSpec("y", 40, ephemeral=True)
    r = Request(
        [KernelSpec("builtin", "axpy", 1, 32, literals=[("i", 10), ("f", 1.0)], arguments=[(x, "i"), (y, "io")])]
    )
    with pytest.raises(RequestError, match="missing input 'x'"):
        r.check_inputs({"y": np.zeros(10, np.float32)})


def test_persisted_output_with_offset_is_rejected():
    y = BufferSpec("y", 40, key="k", offset=8)
    with pytest.raises(RequestError, match=r"buffer 'y'.*offset"):
        Request([KernelSpec("builtin", "fill", 1, 32, literals=[("i", 10), ("f", 1.0)], arguments=[(y, "o")])])


def test_a_name_used_as_store_key_is_checked_when_built():
    assert BufferSpec("w", 4).store_key == "w"
    with pytest.raises(RequestError, match=r"buffer '\.\./x': without key=, the name is the store key"):
        BufferSpec("../x", 4)
    assert BufferSpec("../x", 4, ephemeral=True).name == "../x"  # never stored: any name goes
    with pytest.raises(RequestError, match="store key"):
        BufferSpec("x", 4, key="../x")
