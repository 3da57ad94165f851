"""Kernel libraries: signatures, NVRTC compilation, the binary cache, registry, constraints."""

from __future__ import annotations

import os
import pickle

import dask
import numpy as np
import pytest

import dask_kaas
from dask_kaas.errors import KernelError, RequestError
from dask_kaas.kernels import (
    LaunchConfig,
    Library,
    Param,
    builtin,
    nvrtc,
    parse_signatures,
    register_library,
    resolve_library,
)

BUILTIN_KERNELS = {"fill", "vadd", "axpy", "sgemm", "bias_relu", "softmax_rows", "jacobi_step", "reduce_sum"}

needs_nvrtc = pytest.mark.skipif(not nvrtc.available(), reason="NVRTC (libnvrtc) cannot be loaded here")


@pytest.fixture
def cache_dir(tmp_path):
    with dask.config.set({"kaas.kernel-cache.directory": str(tmp_path / "kcache")}):
        yield tmp_path / "kcache"


# -- signatures -------------------------------------------------------------------------------

TRICKY = r"""
#include <cuda_fp16.h>
#define BLOCK 256   // extern "C" __global__ void not_a_kernel(int x)
template <typename T> __global__ void templated(T* x) {}
__global__ void cxx_linkage(int n) {}
/* extern "C" __global__ void commented_out(int n) {} */
// extern "C" __global__ void line_comment(int n) {}
extern "C" __device__ float helper(float x) { return x; }

extern "C"
__global__
void __launch_bounds__(256, 2)
scale(int n,            // the count
      float alpha, /* factor */ const float* __restrict__ x,
      float *__restrict__ y)
{
    const char* s = "extern \"C\" __global__ void in_string(int n)";
    for (int i = 0; i < n; ++i) y[i] = alpha * x[i];
}

extern "C" {
  __global__ void in_block(unsigned long long n, const double * const p, half* h) {}
  __global__ __launch_bounds__(128) void bounds_first(size_t n, void* raw) {}
  struct S { int a; };
  __global__ void after_struct(int64_t a, char* c) {}
}
extern "C" __global__ void no_params() {}
extern "C" __global__ void void_params(void) {}
"""


def test_parse_signatures_tricky():
    sigs = parse_signatures(TRICKY)
    assert set(sigs) == {"scale", "in_block", "bounds_first", "after_struct", "no_params", "void_params"}
    scale = sigs["scale"]
    assert [p.name for p in scale.params] == ["n", "alpha", "x", "y"]
    assert scale.params[2] == Param("x", "float", pointer=True, const=True)
    assert scale.params[3] == Param("y", "float", pointer=True, const=False)
    assert scale.literal_codes == ("i", "f")
    assert [p.name for p in scale.buffers] == ["x", "y"]
    assert scale.scalars_first

    in_block = sigs["in_block"]
    assert in_block.params[0].dtype == np.uint64 and in_block.params[0].code == "Q"
    assert in_block.params[1] == Param("p", "double", pointer=True, const=True)
    assert in_block.params[2].dtype == np.float16
    bf = sigs["bounds_first"]
    assert bf.params[0].code == "Q" and bf.params[1].pointer and bf.params[1].dtype == np.uint8
    assert sigs["after_struct"].params[0].code == "q"
    assert sigs["after_struct"].params[1].dtype == np.int8
    assert sigs["no_params"].params == () and sigs["void_params"].params == ()


def test_scalars_first_detection():
    sig = parse_signatures('extern "C" __global__ void k(float* y, int n) {}')["k"]
    assert not sig.scalars_first
    assert [p.name for p in sig.literals] == ["n"] and [p.name for p in sig.buffers] == ["y"]


@pytest.mark.parametrize(
    "ctype, dtype, code",
    [
        ("float", np.float32, "f"),
        ("double", np.float64, "d"),
        ("int", np.int32, "i"),
        ("int32_t", np.int32, "i"),
        ("unsigned", np.uint32, "I"),
        ("unsigned int", np.uint32, "I"),
        ("uint32_t", np.uint32, "I"),
        ("long long", np.int64, "q"),
        ("int64_t", np.int64, "q"),
        ("long", np.int64, "q"),
        ("unsigned long long", np.uint64, "Q"),
        ("uint64_t", np.uint64, "Q"),
        ("size_t", np.uint64, "Q"),
        ("char", np.int8, None),
        ("int8_t", np.int8, None),
        ("unsigned char", np.uint8, None),
        ("uint8_t", np.uint8, None),
        ("short", np.int16, None),
        ("half", np.float16, None),
        ("__half", np.float16, None),
    ],
)
def test_param_dtype_and_code(ctype, dtype, code):
    p = Param("v", ctype, pointer=False, const=False)
    assert p.dtype == np.dtype(dtype)
    assert p.code == code
    assert Param("v", ctype, pointer=True, const=True).code is None


def test_unknown_type():
    assert Param("s", "MyStruct").dtype is None and Param("s", "MyStruct").code is None


def test_builtin_signatures():
    assert set(builtin.kernels) == BUILTIN_KERNELS
    for sig in builtin.kernels.values():
        assert sig.scalars_first
        assert all(p.dtype == np.float32 for p in sig.buffers)
    assert dask_kaas.builtin is builtin
    assert builtin.has_kernel("vadd") and not builtin.has_kernel("nope")
    assert builtin.signature("nope") is None


# -- NVRTC ------------------------------------------------------------------------------------


@needs_nvrtc
def test_nvrtc_basics():
    major, _minor = nvrtc.version()
    assert major >= 11
    archs = nvrtc.supported_archs()
    assert 80 in archs and 90 in archs


@needs_nvrtc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_builtin_compiles_to_cubin(arch, cache_dir):
    data, kind = builtin.binary(arch)
    assert kind == "cubin"
    assert data[:4] == b"\x7fELF"
    for name in BUILTIN_KERNELS:  # unmangled symbols in the ELF string table
        assert name.encode() + b"\0" in data
    assert os.path.exists(cache_dir / cached_name(builtin, arch))


@needs_nvrtc
def test_builtin_compiles_to_ptx(cache_dir):
    data, kind = builtin.binary("compute_80")
    assert kind == "ptx"
    text = data.decode()
    for name in BUILTIN_KERNELS:
        assert f".entry {name}(" in text
    assert builtin.binary_path("compute_80").endswith(cached_name(builtin, "compute_80"))


@needs_nvrtc
def test_syntax_error_reports_line_and_log():
    source = 'extern "C" __global__ void k(int n, float* y) {\n    y[0] = 1.0f\n}\n'
    with pytest.raises(KernelError) as info:
        nvrtc.compile(source, name="broken", arch="sm_80")
    msg = str(info.value)
    assert "broken" in msg
    assert "broken.cu(3): error" in msg
    assert 'expected a ";"' in msg


@needs_nvrtc
def test_library_compile_error_names_library(cache_dir):
    lib = Library.from_source("mylib", 'extern "C" __global__ void k(int n) {\n  undefined_fn(n);\n}')
    with pytest.raises(KernelError, match=r"(?s)mylib.*mylib\.cu\(2\): error.*undefined"):
        lib.binary("sm_80")


def test_bad_arch():
    with pytest.raises(KernelError, match="architecture"):
        nvrtc.compile("", name="x", arch="gfx90a")


def test_missing_nvrtc_message(monkeypatch):
    monkeypatch.setattr(nvrtc, "_lib", None)
    monkeypatch.setattr(nvrtc, "_load_error", None)
    monkeypatch.setattr(nvrtc, "candidates", lambda: [])
    monkeypatch.setattr(nvrtc.ctypes.util, "find_library", lambda name: None)
    assert not nvrtc.available()
    with pytest.raises(KernelError, match=r"NVRTC.*missing.*cuda13.*cuda12"):
        nvrtc.compile("", name="x", arch="sm_80")


# -- on-disk cache ----------------------------------------------------------------------------


def cached_name(lib, arch):
    major, minor = nvrtc.version()
    return f"{lib.content_hash}-{arch}-nvrtc{major}.{minor}.{'cubin' if arch.startswith('sm_') else 'ptx'}"


@needs_nvrtc
def test_binary_cache_is_keyed_by_nvrtc_version(cache_dir, monkeypatch):
    """A cubin from another NVRTC is never reused: upgrading NVRTC recompiles."""
    source = 'extern "C" __global__ void k(int n, float* y) { if (n) y[0] = 3.0f; }'
    real_compile, calls = nvrtc.compile, []

    def counting(*args, **kwargs):
        calls.append(nvrtc.version())
        return real_compile(*args, **kwargs)

    monkeypatch.setattr(nvrtc, "compile", counting)
    Library.from_source("versioned", source).binary("sm_80")
    Library.from_source("versioned", source).binary("sm_80")  # same NVRTC: from the disk cache
    assert len(calls) == 1
    real_version = nvrtc.version()
    monkeypatch.setattr(nvrtc, "version", lambda: (real_version[0], real_version[1] + 1))
    Library.from_source("versioned", source).binary("sm_80")
    assert len(calls) == 2
    names = sorted(
        p
        for p in os.listdir(cache_dir)
        if "-sm_80-" in p and p.startswith(Library.from_source("versioned", source).content_hash)
    )
    assert [n.rsplit("-", 1)[1] for n in names] == [
        f"nvrtc{real_version[0]}.{real_version[1]}.cubin",
        f"nvrtc{real_version[0]}.{real_version[1] + 1}.cubin",
    ]


@needs_nvrtc
def test_binary_cache_is_reused(cache_dir, monkeypatch):
    source = 'extern "C" __global__ void k(int n, float* y) { if (n) y[0] = 1.0f; }'
    first, _kind = Library.from_source("cached", source).binary("sm_80")
    path = cache_dir / cached_name(Library.from_source("cached", source), "sm_80")
    assert path.exists() and path.read_bytes() == first
    mtime = path.stat().st_mtime_ns
    assert not [p for p in os.listdir(cache_dir) if p.startswith(".tmp")]

    def boom(*a, **k):
        raise AssertionError("recompiled")

    monkeypatch.setattr(nvrtc, "compile", boom)
    fresh = Library.from_source("cached", source)  # new instance: no in-memory cache
    assert fresh.binary("sm_80") == (first, "cubin")
    assert fresh.binary_path("sm_80") == str(path)
    assert path.stat().st_mtime_ns == mtime
    # a different option set is a different library, so it must compile
    with pytest.raises(AssertionError, match="recompiled"):
        Library.from_source("cached", source, options=["-lineinfo"]).binary("sm_80")


@needs_nvrtc
def test_corrupt_cache_entry_is_recompiled(cache_dir):
    source = 'extern "C" __global__ void k(float* y) { y[0] = 2.0f; }'
    lib = Library.from_source("corrupt", source)
    os.makedirs(cache_dir, exist_ok=True)
    (cache_dir / cached_name(lib, "sm_80")).write_bytes(b"garbage")
    data, _ = lib.binary("sm_80")
    assert data[:4] == b"\x7fELF"
    assert (cache_dir / cached_name(lib, "sm_80")).read_bytes() == data


# -- libraries from files, identity, pickling -------------------------------------------------


@needs_nvrtc
def test_prebuilt_files(tmp_path, cache_dir):
    cubin, _ = builtin.binary("sm_80")
    ptx, _ = builtin.binary("compute_80")
    (tmp_path / "k.cubin").write_bytes(cubin)
    (tmp_path / "k.ptx").write_bytes(ptx)
    lib = Library.from_file(tmp_path / "k.cubin")
    assert (lib.name, lib.kind) == ("k", "cubin")
    assert lib.binary("sm_90") == (cubin, "cubin")
    assert lib.binary_path("sm_80") == str(tmp_path / "k.cubin")
    assert lib.kernels == {} and lib.signature("vadd") is None
    assert lib.has_kernel("vadd") and lib.has_kernel("anything")  # cannot know

    ptx_lib = Library.from_file(str(tmp_path / "k.ptx"))
    assert ptx_lib.kind == "ptx" and ptx_lib.binary("sm_80") == (ptx, "ptx")
    assert ptx_lib.has_kernel("vadd") and not ptx_lib.has_kernel("anything")

    typed = Library.from_file(
        tmp_path / "k.cubin", signatures={"vadd": "int n, const float* a, const float* b, float* c"}
    )
    assert typed.signature("vadd").literal_codes == ("i",)
    assert typed.has_kernel("vadd") and not typed.has_kernel("anything")

    # pickles carry the bytes, so the file may vanish
    clone = pickle.loads(pickle.dumps(lib))
    os.remove(tmp_path / "k.cubin")
    assert clone == lib and clone.binary("sm_80") == (cubin, "cubin")
    path = clone.binary_path("sm_80")
    assert open(path, "rb").read() == cubin


def test_unknown_extension(tmp_path):
    (tmp_path / "k.so").write_bytes(b"x")
    with pytest.raises(KernelError, match=r"k.so"):
        Library.from_file(tmp_path / "k.so")


def test_identity_and_pickle():
    src = 'extern "C" __global__ void k(int n, float* y) {}'
    a = Library.from_source("a", src)
    b = Library.from_source("b", src)
    c = Library.from_source("a", src, options=["-lineinfo"])
    assert a == b and hash(a) == hash(b) and a != c
    assert len(a.hash) == 64 and int(a.hash, 16) >= 0
    assert {a, b, c} == {a, c}
    clone = pickle.loads(pickle.dumps(builtin))
    assert clone == builtin and clone.kernels == builtin.kernels
    assert clone.twin("vadd") is builtin.twin("vadd")
    assert len(pickle.dumps(builtin)) < 3 * len(builtin.source) + 2000


def test_needs_exactly_one_of_source_and_path():
    with pytest.raises(KernelError):
        Library("x")
    with pytest.raises(KernelError):
        Library("x", source="", path="y.cu")


# -- registry ---------------------------------------------------------------------------------


def test_resolve_library(tmp_path):
    assert resolve_library("builtin") is builtin
    assert resolve_library(builtin) is builtin
    lib = register_library(Library.from_source("mine", 'extern "C" __global__ void k() {}'))
    assert resolve_library("mine") is lib

    path = tmp_path / "user.cu"
    path.write_text('extern "C" __global__ void user(int n, float* y) {}')
    first = resolve_library(str(path))
    assert first.kind == "source" and set(first.kernels) == {"user"}
    assert resolve_library(str(path)) is first  # memoised
    os.utime(path, ns=(0, 0))  # a changed mtime reloads
    assert resolve_library(path) is not first


def test_resolve_unknown_name():
    register_library(Library.from_source("listed", 'extern "C" __global__ void k() {}'))
    with pytest.raises(RequestError, match=r"unknown kernel library 'nope'.*'builtin'.*'listed'"):
        resolve_library("nope")


def test_resolve_missing_path(tmp_path):
    missing = str(tmp_path / "missing.cubin")
    with pytest.raises(RequestError, match=r"missing.cubin"):
        resolve_library(missing)


# -- constraints ------------------------------------------------------------------------------


def test_check_launch():
    builtin.check_launch("sgemm", (4, 4), (16, 16, 1))
    builtin.check_launch("sgemm", 1, (16, 16))
    with pytest.raises(RequestError, match=r"'builtin'.*'sgemm'.*block == \(16, 16, 1\)"):
        builtin.check_launch("sgemm", (4, 4, 1), (32, 8, 1))
    builtin.check_launch("vadd", 7, 33)
    with pytest.raises(RequestError, match="1024"):
        builtin.check_launch("vadd", 1, (64, 32, 1))
    with pytest.raises(RequestError, match="positive"):
        builtin.check_launch("vadd", 0, 32)

    lib = Library.from_source("c", 'extern "C" __global__ void k() {}', constraints={"k": {"max_block": 128}})
    lib.check_launch("k", 1, (8, 16))
    with pytest.raises(RequestError, match=r"'c'.*'k'.*max_block=128"):
        lib.check_launch("k", 1, (16, 16))


def test_unknown_constraint():
    with pytest.raises(KernelError, match="min_block"):
        Library.from_source("c", "", constraints={"k": {"min_block": 1}})


def test_launch_config_normalises():
    lc = LaunchConfig(grid=4, block=(16, 16))
    assert lc.grid == (4, 1, 1) and lc.block == (16, 16, 1) and lc.shared == 0


# -- run_twin ---------------------------------------------------------------------------------


def test_run_twin_views_write_in_place():
    n = 10
    a = np.arange(n, dtype=np.float32)
    b = np.full(n, 2, dtype=np.float32)
    raw = [a.view(np.uint8).copy(), b.view(np.uint8).copy(), np.zeros(n * 4 + 3, np.uint8)]
    builtin.run_twin("vadd", LaunchConfig(1, 32), [n], raw)
    assert np.array_equal(raw[2][: n * 4].view(np.float32), a + 2)
    assert not raw[2][n * 4 :].any()  # trailing bytes that fill no element are untouched


def test_run_twin_passes_typed_arguments():
    seen = {}

    def twin(launch, n, x, y, p, q):
        seen.update(launch=launch, n=n, x=x, y=y, p=p, q=q)
        q[:] = p[: q.size]

    lib = Library.from_source(
        "t",
        'extern "C" __global__ void k(int n, double x, float y, const int64_t* p, unsigned char* q) {}',
        twins={"k": twin},
    )
    p = np.array([1, 2], dtype=np.int64).view(np.uint8)
    q = np.zeros(2, np.uint8)
    launch = LaunchConfig(1, 1)
    lib.run_twin("k", launch, [3, 1.5, 2.5], [p, q])
    assert seen["launch"] is launch and seen["n"] == 3 and type(seen["n"]) is int
    assert type(seen["x"]) is np.float64 and type(seen["y"]) is np.float32
    assert seen["p"].dtype == np.int64 and list(seen["p"]) == [1, 2]
    assert list(q) == [1, 2]


def test_run_twin_errors():
    lib = Library.from_source("nt", 'extern "C" __global__ void k(int n, float* y) {}')
    with pytest.raises(KernelError, match="kernel 'k' of library 'nt' has no host twin"):
        lib.run_twin("k", LaunchConfig(1, 1), [1], [np.zeros(4, np.uint8)])
    with pytest.raises(RequestError, match="buffer"):
        builtin.run_twin("vadd", LaunchConfig(1, 1), [1], [np.zeros(4, np.uint8)])


def test_dict_round_trip(tmp_path):
    import json

    d = json.loads(json.dumps(builtin.to_dict()))
    assert Library.from_dict(d) is builtin  # the registered one
    d["name"] = "builtin-copy"
    copy = Library.from_dict(d)
    assert copy == builtin and copy.name == "builtin-copy"
    assert copy.twin("vadd") is builtin.twin("vadd")
    copy.check_launch("sgemm", 1, (16, 16, 1))
    with pytest.raises(RequestError):
        copy.check_launch("sgemm", 1, (8, 8, 1))

    (tmp_path / "k.ptx").write_bytes(b".visible .entry k(\n)\n{\nret;\n}\n")
    ptx = Library.from_file(tmp_path / "k.ptx", signatures={"k": ""})
    back = Library.from_dict(json.loads(json.dumps(ptx.to_dict())))
    assert back == ptx and back.kind == "ptx" and back.binary("sm_80") == ptx.binary("sm_80")
    assert back.path is None and back.signature("k").params == ()  # a dict's path is never read

    d = builtin.to_dict()
    d["name"], d["hash"] = "tampered", "0" * 64
    with pytest.raises(RequestError, match="hash"):
        Library.from_dict(d)


def test_compile_alias_gives_the_cubin_bytes():
    import dask_kaas

    assert dask_kaas.builtin.compile("sm_80").startswith(b"\x7fELF")
