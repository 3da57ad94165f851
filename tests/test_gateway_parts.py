"""The gateway's parts, as pure code: datatypes, tokens, rate limits, the OIP codec, functions, catalog."""

import dataclasses
import gzip
import json
import os

import numpy as np
import pytest
import yaml

pytest.importorskip("hypothesis")  # a test-only dependency: without it the module skips, never errors
from hypothesis import given, settings
from hypothesis import strategies as st

from dask_kaas import BufferStore, ConfigError, RequestError
from dask_kaas.datatypes import DATATYPES, to_datatype, to_numpy
from dask_kaas.errors import FunctionNotFound
from dask_kaas.functions import FunctionRepository, TensorSpec, function_from_doc
from dask_kaas.gateway.catalog import Catalog, Uncached
from dask_kaas.gateway.oip import InferenceStats, OipError, decode_body, encode_outputs, model_config, parse_infer
from dask_kaas.gateway.ratelimit import RateLimiter
from dask_kaas.gateway.tokens import Tokens, add_token, hash_token, load_tokens, revoke_tenant

N = 8


def vadd_doc(n=N, declared=True):
    request = {
        "buffers": [
            {"name": "x", "size": 4 * n, "dtype": "float32", "ephemeral": True},
            {"name": "w", "size": 4 * n, "key": "model/w", "const": True, "dtype": "float32"},
            {"name": "y", "size": 4 * n, "dtype": "float32", "ephemeral": True},
        ],
        "kernels": [
            {
                "library": "builtin",
                "kernel": "vadd",
                "grid": [1],
                "block": [32],
                "literals": [{"type": "i", "value": n}],
                "arguments": [["x", "i"], ["w", "i"], ["y", "o"]],
            }
        ],
    }
    if not declared:
        return request
    return {
        "request": request,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, n // 2]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [n]}],
    }


@pytest.fixture
def repo(tmp_path):
    return FunctionRepository(BufferStore(str(tmp_path / "store"), shared=["public"]))


# ------------------------------------------------------------------ datatypes
def test_datatypes_round_trip_and_refuse_what_has_no_buffer_dtype():
    for name, dtype in DATATYPES.items():
        assert to_numpy(name) == dtype and to_datatype(dtype) == name
    with pytest.raises(ValueError, match="BYTES"):
        to_numpy("BYTES")
    with pytest.raises(ValueError, match="no Open Inference Protocol datatype"):
        to_datatype(np.complex64)
    with pytest.raises(ValueError):
        to_datatype(np.dtype(">f4"))


# ------------------------------------------------------------------ tokens
def test_tokens_are_stored_hashed_and_name_their_tenant(tmp_path):
    path = str(tmp_path / "tokens.yaml")
    alice = add_token(path, "alice")
    bob = add_token(path, "bob", rate=5, burst=10)
    alice2 = add_token(path, "alice")
    text = open(path).read()
    assert alice not in text and bob not in text and hash_token(alice) in text
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    tokens = Tokens(path)
    assert tokens.tenant_of(f"Bearer {alice}") == "alice" == tokens.tenant_of(f"bearer {alice2}")
    assert tokens.tenant_of(f"Bearer {bob}") == "bob"
    assert tokens.tenants["bob"].rate == 5.0 and tokens.tenants["bob"].burst == 10.0
    for bad in (
        None,
        "",
        "Bearer",
        f"Basic {alice}",
        f"Bearer {alice}x",
        "Bearer " + "a" * 10000,
        "Bearer \ud800",
        f"Token {alice}",
    ):
        assert tokens.tenant_of(bad) is None
    assert revoke_tenant(path, "alice") == 2
    tokens.refresh()  # the file changed: alice's tokens are gone without a restart
    assert tokens.tenant_of(f"Bearer {alice}") is None and tokens.tenant_of(f"Bearer {bob}") == "bob"


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"tenants": {"alice": {"tokens": ["plaintext-token"]}}}, "hashes"),
        ({"tenants": {"../x": {"tokens": []}}}, "tenant"),
        ({"tenants": {"alice": {"rate": -1}}}, "rate must be a positive number"),
        ({"tenants": {"alice": {"colour": "red"}}}, "expected fields"),
        ({"users": {}}, "one field 'tenants'"),
    ],
)
def test_a_bad_tokens_file_is_a_clear_error(tmp_path, doc, message):
    path = tmp_path / "tokens.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=message):
        load_tokens(str(path))
    with pytest.raises(ConfigError, match="tenant"):
        add_token(str(tmp_path / "other.yaml"), "no/slashes")


# ------------------------------------------------------------------ rate limits
@settings(max_examples=200, deadline=None)
@given(rate=st.floats(0.1, 100), burst=st.floats(1, 50), gaps=st.lists(st.floats(0, 2), min_size=1, max_size=200))
def test_a_bucket_never_lets_more_through_than_its_rate_and_burst(rate, burst, gaps):
    limiter = RateLimiter()
    limiter.configure({"t": (rate, burst)})
    now, allowed = 0.0, 0
    for gap in gaps:
        now += gap
        wait = limiter.wait("t", now)
        if wait == 0:
            allowed += 1
        else:
            assert wait > 0
            # waiting what it says is enough
            probe = RateLimiter()
            probe._limits, probe._buckets = (
                limiter._limits,
                {"t": type(limiter._buckets["t"])(**vars(limiter._buckets["t"]))},
            )
            assert probe.wait("t", now + wait + 1e-9) == 0
    assert allowed <= burst + rate * now + 1e-6
    assert limiter.wait("other", now) == 0  # tenants without a rate are never limited


def test_changing_a_limit_starts_a_full_bucket():
    limiter = RateLimiter()
    limiter.configure({"t": (0.01, 1)})
    assert limiter.wait("t", 0.0) == 0 and limiter.wait("t", 0.0) > 99
    limiter.configure({"t": (0.01, 1)})  # unchanged: still empty
    assert limiter.wait("t", 0.0) > 0
    limiter.configure({"t": (0.01, 2)})
    assert limiter.wait("t", 0.0) == 0


# ------------------------------------------------------------------ functions
def test_functions_are_versioned_listed_and_removed(repo):
    fn = repo.put("vadd", vadd_doc(), namespace="alice")
    assert (fn.qualified_name, fn.version) == ("alice:vadd", 1)
    assert [t.to_dict() for t in fn.inputs] == [{"name": "x", "datatype": "FP32", "shape": [2, N // 2]}]
    assert repo.put("vadd", vadd_doc(declared=False), namespace="alice").version == 2
    assert repo.versions("vadd", namespace="alice") == [1, 2]
    assert repo.get("vadd", namespace="alice").inputs[0].shape == (N,)  # from the buffer spec
    assert repo.get("vadd", namespace="alice", version=1).inputs[0].shape == (2, N // 2)
    assert [f.name for f in repo.ls(namespace="alice")] == ["vadd"] and repo.ls(namespace="bob") == []
    assert repo.rm("vadd", namespace="alice", version=1) == [1]
    assert repo.versions("vadd", namespace="alice") == [2]
    assert repo.put("vadd", vadd_doc(), namespace="alice").version == 3  # numbers are never reused
    assert repo.rm("vadd", namespace="alice") == [2, 3]
    with pytest.raises(FunctionNotFound):
        repo.get("vadd", namespace="alice")


def test_a_call_runs_as_its_caller_and_reads_the_owners_namespace(repo):
    fn = repo.put("vadd", vadd_doc(), namespace="public")
    req = fn.request_for("bob", deadline=2.0)
    assert req.tenant == "bob" and req.deadline == 2.0
    assert req.buffers["w"].store_key == "public:model/w" and req.buffers["x"].store_key == "public:x"
    assert fn.request_for("bob", deadline=2.0) is req  # built once per tenant and deadline
    assert repo.store.resolve(req.buffers["w"].store_key, "bob") == ("public", "model/w")


def test_tenants_find_their_own_and_shared_functions_only(repo):
    repo.put("f", vadd_doc(), namespace="alice")
    repo.put("g", vadd_doc(), namespace="public")
    repo.put("g", vadd_doc(), namespace="bob")
    assert repo.find("f", "alice").namespace == "alice"
    assert repo.find("g", "alice").namespace == "public"
    assert repo.find("g", "bob").namespace == "bob"  # its own comes first
    assert repo.find("public:g", "bob").namespace == "public"
    for model in ("f", "alice:f", "bob:g", "../alice/f", "alice/f", "alice:../f", ":f", "f:", "", "a" * 300):
        with pytest.raises(FunctionNotFound):
            repo.find(model, "carol")
    with pytest.raises(FunctionNotFound, match="not found"):
        repo.find("alice:f", "bob")  # the same answer as a missing one


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(inputs=[{"name": "w", "datatype": "FP32", "shape": [N]}]), "ephemeral input"),
        (lambda d: d.update(inputs=[{"name": "y", "datatype": "FP32", "shape": [N]}]), "not an input"),
        (lambda d: d.update(inputs=[{"name": "x", "datatype": "INT32", "shape": [N]}]), "buffer 'x' is float32"),
        (lambda d: d.update(inputs=[{"name": "x", "datatype": "FP32", "shape": [N + 1]}]), "holds 32"),
        (lambda d: d.update(inputs=[{"name": "x", "datatype": "BYTES", "shape": [N]}]), "BYTES"),
        (lambda d: d.update(inputs=[{"name": "x", "datatype": "FP32", "shape": [-1]}]), "positive integers"),
        (lambda d: d.update(outputs=[]), "non-empty"),
        (lambda d: d.update(deadline=-1), "deadline"),
        (lambda d: d.update(python="os.system"), "unknown field"),
        (lambda d: d["request"]["kernels"][0].update(library="/etc/passwd.cu"), "library"),
    ],
)
def test_a_bad_function_file_is_refused_naming_what_is_wrong(repo, change, message):
    doc = vadd_doc()
    change(doc)
    with pytest.raises(RequestError, match=message):
        repo.put("f", doc, namespace="alice")
    assert repo.versions("f", namespace="alice") == []


@pytest.mark.parametrize("name", ["", "a/b", "a:b", "..", ".hidden", "a b", "x" * 200])
def test_function_names_are_safe_path_segments(repo, name):
    with pytest.raises(RequestError, match="function name"):
        repo.put(name, vadd_doc(), namespace="alice")


def test_a_function_drops_any_tenant_in_its_request(repo):
    doc = vadd_doc()
    doc["request"]["tenant"] = "mallory"
    fn = repo.put("f", doc, namespace="alice")
    assert fn.request.tenant is None and fn.request_for("alice").tenant == "alice"


def test_the_catalog_trusts_its_version_list_for_its_ttl(repo):
    now = [0.0]
    catalog = Catalog(repo, ttl=1.0, clock=lambda: now[0])
    repo.put("f", vadd_doc(), namespace="alice")
    assert catalog.find("f", "alice")[1] == [1]
    repo.put("f", vadd_doc(), namespace="alice")
    assert catalog.find("f", "alice")[0].version == 1  # within the ttl
    now[0] = 1.5
    fn, versions = catalog.find("f", "alice")
    assert (fn.version, versions) == (2, [1, 2])
    assert catalog.find("f", "alice", "1")[0].version == 1
    for version in ("3", "x", "-1", "1" * 40):
        with pytest.raises(FunctionNotFound):
            catalog.find("f", "alice", version)
    assert [f.qualified_name for f, _ in catalog.visible("alice")] == ["alice:f"]


def test_a_function_says_when_the_store_no_longer_holds_its_consts(repo):
    """A function records each const's size and version when it is put; a call after the store changed
    the const's size (another example wrote the same key, say) is refused, naming both, not run on a
    window of the wrong bytes. A new version of the same size is an update."""
    import numpy as np

    from dask_kaas.errors import FunctionStale

    store = repo.store
    store.put("model/w", np.ones(N, np.float32), namespace="alice")
    fn = repo.put("f", vadd_doc(), namespace="alice")
    assert fn.consts == (("alice", "model/w", 4 * N, 1),)
    assert repo.get("f", namespace="alice").consts == fn.consts  # kept in the record
    now = [0.0]
    catalog = Catalog(repo, ttl=1.0, clock=lambda: now[0])
    assert catalog.find("f", "alice")[0].version == 1
    store.put("model/w", np.full(N, 2, np.float32), namespace="alice")  # retrained: same size
    now[0] = 2.0
    assert catalog.find("f", "alice")[0].version == 1
    store.put("model/w", np.ones(4 * N, np.float32), namespace="alice")  # another example's key
    assert catalog.find("f", "alice")[0].version == 1  # within the ttl: not asked again
    now[0] = 4.0
    with pytest.raises(
        FunctionStale,
        match=rf"alice:model/w of {4 * N} bytes \(store version 1\); the store "
        rf"holds {16 * N} bytes \(version 3\)",
    ):
        catalog.find("f", "alice")
    repo.put("f", vadd_doc(4 * N), namespace="alice")  # put again for the new const
    now[0] = 6.0
    assert catalog.find("f", "alice")[0].version == 2
    store.delete("model/w", namespace="alice")
    now[0] = 8.0
    with pytest.raises(FunctionStale, match="no longer holds"):
        catalog.find("f", "alice")
    assert repo.put("g", vadd_doc(), namespace="alice").consts == ()  # put before its const: nothing to compare


def test_gateway_settings_given_win_over_config_and_bad_ones_are_named():
    import dask

    from dask_kaas.errors import ConfigError
    from dask_kaas.gateway.service import GatewaySettings

    with dask.config.set(
        {"kaas.gateway.max-json": "1MiB", "kaas.gateway.read-timeout": 7, "kaas.gateway.metrics-public": "yes"}
    ):
        configured = GatewaySettings().resolved()
        given = GatewaySettings(max_json="2KiB", read_timeout=0.5, metrics_public=False, metrics_token="t").resolved()
    assert (configured.max_json, configured.read_timeout, configured.metrics_public) == (1 << 20, 7.0, True)
    assert configured.metrics_token is None
    assert (given.max_json, given.read_timeout, given.metrics_public, given.metrics_token) == (2048, 0.5, False, "t")
    with dask.config.set({"kaas.gateway.metrics-public": "sometimes"}):
        with pytest.raises(ConfigError, match=r"kaas.gateway.metrics-public"):
            GatewaySettings().resolved()
    with pytest.raises(ConfigError, match=r"kaas.gateway.max-json"):
        GatewaySettings(max_json="lots").resolved()


def test_the_gateway_commands_flags_reach_its_settings_over_config(tmp_path, monkeypatch):
    """``dask kaas gateway --max-json --read-timeout``: given, they win over kaas.gateway.*; not given,
    the settings fall back to it (serve() stubbed: no cluster, no server)."""
    import dask
    from click.testing import CliRunner

    from dask_kaas import logs
    from dask_kaas.cli import main as cli
    from dask_kaas.gateway import server

    served = []
    monkeypatch.setattr(server, "serve", lambda settings, **kw: served.append((settings.resolved(), kw)))
    monkeypatch.setattr(logs, "setup_logging", lambda: None)  # leave the dask_kaas logger as the tests have it
    base = ["gateway", "--scheduler", "tcp://127.0.0.1:1", "--tokens", str(tmp_path / "tokens.yaml")]
    with dask.config.set(
        {
            "kaas.gateway.max-json": "1MiB",
            "kaas.gateway.read-timeout": 7,
            "kaas.gateway.metrics-token": "scraper",
            "kaas.gateway.grpc-port": 8001,
        }
    ):
        for args in (["--max-json", "2KiB", "--read-timeout", "0.5", "--port", "9000"], []):
            out = CliRunner().invoke(cli, base + args)
            assert out.exit_code == 0, out.output
    (flags, kw), (configured, _kw_configured) = served
    assert (flags.max_json, flags.read_timeout, kw["port"], kw["grpc_port"]) == (2048, 0.5, 9000, 8001)
    assert (configured.max_json, configured.read_timeout) == (1 << 20, 7.0)
    assert flags.metrics_token == configured.metrics_token == "scraper"  # config (or env) only: no flag
    assert flags.scheduler == "tcp://127.0.0.1:1" and flags.tokens == str(tmp_path / "tokens.yaml")
    assert CliRunner().invoke(cli, [*base, "--read-timeout", "0"]).exit_code == 2


def test_the_catalog_answers_from_its_caches_alone_or_says_it_cannot(repo):
    now = [0.0]
    catalog = Catalog(repo, ttl=1.0, clock=lambda: now[0])
    repo.put("f", vadd_doc(), namespace="alice")
    with pytest.raises(Uncached):  # never looked up: the store is needed
        catalog.find("f", "alice", cached_only=True)
    assert catalog.find("f", "alice")[0].version == 1
    assert catalog.find("f", "alice", cached_only=True)[0].version == 1
    with pytest.raises(Uncached):  # version 1 is listed but another version was never loaded
        repo.put("f", vadd_doc(), namespace="alice")
        now[0] = 2.0
        catalog.find("f", "alice")  # lists [1, 2], loads 2
        catalog.find("f", "alice", "1", cached_only=True)  # loaded before: answered
        catalog.find("g", "alice", cached_only=True)
    now[0] = 3.5  # the list is stale: the store is needed again
    with pytest.raises(Uncached):
        catalog.find("f", "alice", cached_only=True)
    with pytest.raises(FunctionNotFound):  # bob cannot see alice's function, cached or not
        catalog.find("alice:f", "bob", cached_only=True)


# ------------------------------------------------------------------ the OIP codec
@pytest.fixture
def fn(repo):
    return repo.put("vadd", vadd_doc(), namespace="alice")


def infer_body(inputs, outputs=None, parameters=None, binary=()):
    doc = {"inputs": inputs}
    if outputs is not None:
        doc["outputs"] = outputs
    if parameters is not None:
        doc["parameters"] = parameters
    header = json.dumps(doc).encode()
    return header + b"".join(binary), str(len(header)) if binary else None


def test_json_and_binary_inputs_and_outputs(fn):
    x = np.arange(N, dtype=np.float32).reshape(2, N // 2)
    body, _ = infer_body([{"name": "x", "datatype": "FP32", "shape": [2, N // 2], "data": x.tolist()}])  # nested
    call = parse_infer(body, None, fn)
    np.testing.assert_array_equal(call.inputs["x"], x)
    body, length = infer_body(
        [{"name": "x", "datatype": "FP32", "shape": [2, N // 2], "parameters": {"binary_data_size": x.nbytes}}],
        outputs=[{"name": "y", "parameters": {"binary_data": True}}],
        binary=[x.tobytes()],
    )
    call = parse_infer(body, length, fn)
    np.testing.assert_array_equal(call.inputs["x"], x)
    y = np.arange(N, dtype=np.float32) * 2
    payload, headers = encode_outputs(fn, call, {"y": y.view(np.uint8)})
    n = int(headers["inference-header-content-length"])
    head = json.loads(payload[:n])
    assert head["outputs"][0]["parameters"]["binary_data_size"] == y.nbytes
    np.testing.assert_array_equal(np.frombuffer(payload[n:], np.float32), y)
    call.outputs = [(fn.outputs[0], False)]
    payload, headers = encode_outputs(fn, call, {"y": y})
    assert json.loads(payload)["outputs"][0]["data"] == y.tolist() and headers["content-type"] == "application/json"


FN = function_from_doc(vadd_doc(), name="vadd", namespace="alice")
X = {"name": "x", "datatype": "FP32", "shape": [2, N // 2]}


@pytest.mark.parametrize(
    "body, length, message",
    [
        (b"{not json", None, "not valid JSON"),
        (b"[1, 2]", None, "JSON object"),
        (json.dumps({"inputs": [{**X, "data": [0.0] * N}], "tenant": "bob"}).encode(), None, "bearer token's"),
        (
            json.dumps({"inputs": [{**X, "data": [0.0] * N}], "parameters": {"tenant": "bob"}}).encode(),
            None,
            "tenant is the bearer token's",
        ),
        (json.dumps({"inputs": []}).encode(), None, "missing input"),
        (json.dumps({"inputs": [{**X, "name": "w", "data": [0.0] * N}]}).encode(), None, "input 'w' is not an input"),
        (
            json.dumps({"inputs": [{**X, "datatype": "FP64", "data": [0.0] * N}]}).encode(),
            None,
            "input 'x': datatype 'FP64', the model takes FP32",
        ),
        (json.dumps({"inputs": [{**X, "shape": [N], "data": [0.0] * N}]}).encode(), None, r"input 'x': shape \[8\]"),
        (json.dumps({"inputs": [{**X, "data": [0.0] * (N - 1)}]}).encode(), None, "input 'x': data holds 7 elements"),
        (json.dumps({"inputs": [{**X, "data": ["a"] * N}]}).encode(), None, "input 'x': data is not FP32"),
        (json.dumps({"inputs": [{**X, "data": [{"a": 1}] * N}]}).encode(), None, "input 'x'"),
        (json.dumps({"inputs": [{**X}]}).encode(), None, "no data"),
        (json.dumps({"inputs": [{**X, "data": [0.0] * N}, {**X, "data": [0.0] * N}]}).encode(), None, "twice"),
        (
            json.dumps({"inputs": [{**X, "parameters": {"binary_data_size": 4}}]}).encode() + b"\0" * 4,
            "80",
            "input 'x': 4 bytes of binary data",
        ),
        (
            json.dumps({"inputs": [{**X, "parameters": {"binary_data_size": 4 * N}}]}).encode() + b"\0" * 4,
            "80",
            "binary data ends",
        ),
        (json.dumps({"inputs": [{**X, "data": [0.0] * N}]}).encode() + b"\0" * 4, "85", "no input claims"),
        (b"{}", "99", "Inference-Header-Content-Length"),
        (
            json.dumps({"inputs": [{**X, "data": [0.0] * N}], "outputs": [{"name": "x"}]}).encode(),
            None,
            "not an output",
        ),
    ],
)
def test_bad_infer_bodies_are_400_naming_the_tensor(fn, body, length, message):
    if length is not None and length != "99":
        length = str(body.index(b"}]}") + 3)
    with pytest.raises(OipError, match=message) as info:
        parse_infer(body, length, fn)
    assert info.value.status == 400


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
            lambda c: st.one_of(
                st.lists(c, max_size=4),
                st.dictionaries(
                    st.sampled_from(
                        [
                            "inputs",
                            "outputs",
                            "name",
                            "shape",
                            "datatype",
                            "data",
                            "id",
                            "parameters",
                            "binary_data_size",
                            "x",
                            "y",
                        ]
                    ),
                    c,
                    max_size=5,
                ),
            ),
            max_leaves=30,
        ).map(lambda d: json.dumps(d).encode()),
    ),
    st.one_of(st.none(), st.text(max_size=4)),
)
def test_parsing_any_body_raises_only_oip_errors(body, length):
    try:
        call = parse_infer(body, length, FN)
    except OipError as e:
        assert 400 <= e.status < 500 and e.message
    else:
        assert set(call.inputs) <= {"x"}


def test_compressed_bodies_are_bounded():
    assert decode_body(gzip.compress(b"abc"), "gzip", 10) == b"abc"
    with pytest.raises(OipError) as info:
        decode_body(gzip.compress(b"\0" * 10_000_000), "gzip", 1 << 20)  # a small bomb
    assert info.value.status == 413
    with pytest.raises(OipError) as info:
        decode_body(b"not gzip", "gzip", 100)
    assert info.value.status == 400
    with pytest.raises(OipError) as info:
        decode_body(b"x", "br", 100)
    assert info.value.status == 415


# ------------------------------------------------------------------ protocol conformance (pure)
# the bodies kserve 0.21's InferRequest.to_rest() produces (printed by kserve itself), JSON and binary
KSERVE_JSON = {
    "id": "req-1",
    "model_name": "vadd",
    "inputs": [{"name": "x", "shape": [2, N // 2], "datatype": "FP32", "data": [float(i) for i in range(N)]}],
}
KSERVE_BINARY = (
    b'{"id":"req-2","model_name":"vadd","inputs":[{"name":"x","shape":[2,4],"datatype":"FP32",'
    b'"parameters":{"binary_data_size":32}}],"outputs":[{"name":"y","parameters":{"binary_data":true}}],'
    b'"parameters":{"a":1}}'
)


def with_input(datatype, shape):
    return dataclasses.replace(FN, inputs=(TensorSpec("x", datatype, tuple(shape)),))


def test_kserve_bodies_and_the_specs_optional_fields_are_accepted():
    call = parse_infer(json.dumps(KSERVE_JSON).encode(), None, FN)
    assert call.id == "req-1" and call.inputs["x"].tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    x = np.arange(N, dtype=np.float32)
    call = parse_infer(KSERVE_BINARY + x.tobytes(), str(len(KSERVE_BINARY)), FN)
    assert call.outputs == [(FN.outputs[0], True)] and call.parameters == {"a": 1}
    np.testing.assert_array_equal(call.inputs["x"].ravel(), x)
    # the spec's optional fields, and fields it does not name (its schema allows them), at every level
    doc = {
        **KSERVE_JSON,
        "model_name": "alice:vadd",
        "model_version": "0",
        "parameters": {"content_type": "np"},
        "extra": {"anything": 1},
        "outputs": [{"name": "y", "parameters": {}, "extra": 2}],
    }
    doc["inputs"] = [{**doc["inputs"][0], "parameters": {"content_type": "np"}, "extra": [3]}]
    assert parse_infer(json.dumps(doc).encode(), None, FN).outputs == [(FN.outputs[0], False)]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model_name": "other"}, "model_name 'other' is not the model called"),
        ({"model_name": "bob:vadd"}, "model_name 'bob:vadd' is not the model called"),
        ({"model_name": 7}, "model_name must be a string, got 7"),
        ({"model_version": 0}, "model_version must be a string"),
        ({"model_version": "3"}, "model_version '3' is not the version called"),
        ({"tenant": "bob"}, "'tenant' is not accepted: the tenant is the bearer token's"),
        ({"parameters": {"tenant": "bob"}}, "the tenant is the bearer token's"),
        ({"inputs": [{**X, "data": [0.0] * N, "tenant": "bob"}]}, "input 'x': 'tenant' is not accepted"),
        ({"inputs": [{**X, "data": [0.0] * N, "parameters": {"tenant": "bob"}}]}, "input 'x': parameter 'tenant'"),
        ({"outputs": [{"name": "y", "parameters": {"tenant": "bob"}}]}, "output 'y': parameter 'tenant'"),
        ({"outputs": [{"name": "y", "tenant": "bob"}]}, "output 'y': 'tenant' is not accepted"),
        ({"outputs": [{"name": "y"}] * 2000}, r"outputs\[1\]: output 'y' is requested twice"),
        ({"inputs": [{**X, "name": ["x"], "data": [0.0] * N}]}, "is not an input"),
    ],
)
def test_a_foreign_model_or_version_a_tenant_and_duplicate_outputs_are_400(change, message):
    doc = {"inputs": [{**X, "data": [0.0] * N}], **change}
    with pytest.raises(OipError, match=message) as info:
        parse_infer(json.dumps(doc).encode(), None, FN)
    assert info.value.status == 400


@pytest.mark.parametrize(
    "datatype, shape, data, message",
    [
        ("FP32", [4], b"[1, NaN, 3, 4]", "not valid JSON.*NaN"),
        ("FP32", [4], b"[1, 2, Infinity, 4]", "not valid JSON.*Infinity"),
        ("FP32", [4], b"[1, 2, 3, -Infinity]", "not valid JSON.*-Infinity"),
        ("FP64", [4], b"[1, 2, 3, 1e400]", r"input 'x': data is not FP64: element 3 \(inf\) is not a finite number"),
        ("FP32", [4], b"[1, null, 3, 4]", "input 'x': data is not FP32: element 1 is null"),
        ("FP32", [4], b"[1, 2, true, 4]", "input 'x': data is not FP32: element 2 is true"),
        ("FP32", [2, 2], b"[[1, 2], [3, false]]", r"element 3 \[1, 1\] is false"),
        ("FP32", [4], b"[1, 2, 3, 1e39]", r"element 3 \(1e\+39\) is beyond FP32's range"),
        ("FP16", [4], b"[1, 2, 65520, 4]", r"element 2 \(65520\) is beyond FP16's range"),
        ("INT8", [4], b"[1, 2, 128, 4]", r"element 2 \(128\) is out of INT8's range \[-128, 127\]"),
        ("UINT8", [4], b"[1, -1, 3, 4]", r"element 1 \(-1\) is out of UINT8's range"),
        ("UINT64", [2], b"[0, 18446744073709551616]", "element 1 .* is out of UINT64's range"),
        ("INT64", [2], b"[0, 9223372036854775808.0]", "element 1 .* is out of INT64's range"),
        ("INT32", [4], b"[1, 2.5, 3, 4]", r"element 1 \(2.5\) is not an integer"),
        ("INT32", [4], b'[1, "2", 3, 4]', "element 1 is a string '2'"),
        (
            "BOOL",
            [4],
            b"[true, 1, false, true]",
            "input 'x': data is not BOOL: element 1 is 1, BOOL takes true or false",
        ),
        ("FP32", [4], b"[[1, 2], [3, 4]]", r"data must be a flat list of 4 elements or lists nested as \[4\]"),
        ("FP32", [2, 2], b"[[1, 2, 3], [4]]", r"nested as \[2, 2\]"),
        ("FP32", [2, 2], b"[[1, 2], 3, 4]", r"nested as \[2, 2\]"),
        ("FP32", [2, 2], b"[[[1], [2]], [[3], [4]]]", r"nested as \[2, 2\]"),
        ("FP32", [2, 2], b"[1, 2, 3]", "data holds 3 elements, the shape needs 4"),
        ("FP32", [2], b"5", "data must be a list"),
    ],
)
def test_data_json_cannot_hold_exactly_or_of_another_shape_is_400_naming_tensor_and_element(
    datatype, shape, data, message
):
    body = b'{"inputs": [{"name": "x", "datatype": "%s", "shape": %s, "data": %s}]}' % (
        datatype.encode(),
        json.dumps(shape).encode(),
        data,
    )
    with pytest.raises(OipError, match=message) as info:
        parse_infer(body, None, with_input(datatype, shape))
    assert info.value.status == 400


@pytest.mark.parametrize(
    "datatype, shape, data, expected",
    [
        ("FP32", [4], "[1, 2.5, -3, 3.4028235e38]", [1, 2.5, -3, np.finfo(np.float32).max]),  # the shortest repr of max
        ("FP16", [2], "[65504, -65519]", [65504, -65504]),  # rounds to max, not inf
        ("INT8", [2, 2], "[[-128, 127], [0, 1.0]]", [[-128, 127], [0, 1]]),  # integral numbers
        ("UINT64", [2], "[0, 18446744073709551615]", [0, 2**64 - 1]),
        ("INT64", [2], "[-9223372036854775808, 9223372036854775807]", [-(2**63), 2**63 - 1]),
        ("BOOL", [1, 3], "[true, false, true]", [[True, False, True]]),  # flat for any shape
        ("FP64", [0], "[]", []),
        ("FP64", [], "7", 7.0),  # a scalar, nested as []
        ("FP64", [], "[7]", 7.0),  # or flat
    ],
)
def test_data_of_every_datatype_within_range_is_read_exactly(datatype, shape, data, expected):
    body = f'{{"inputs": [{{"name": "x", "datatype": "{datatype}", "shape": {shape}, "data": {data}}}]}}'
    array = parse_infer(body.encode(), None, with_input(datatype, shape)).inputs["x"]
    assert array.dtype == to_numpy(datatype) and array.shape == tuple(shape)
    assert array.tolist() == expected


def test_a_json_reply_never_holds_nan_or_infinity():
    call = parse_infer(json.dumps({"inputs": [{**X, "data": [0.0] * N}]}).encode(), None, FN)
    y = np.arange(N, dtype=np.float32)
    y[5] = np.nan
    with pytest.raises(OipError, match=r"output 'y': element 5 is nan.*JSON.*binary_data") as info:
        encode_outputs(FN, call, {"y": y})
    assert info.value.status == 422
    y[5] = np.inf
    with pytest.raises(OipError, match="element 5 is inf"):
        encode_outputs(FN, call, {"y": y})
    call.outputs = [(FN.outputs[0], True)]  # as binary it is fine: raw IEEE floats
    payload, headers = encode_outputs(FN, call, {"y": y})
    n = int(headers["inference-header-content-length"])
    assert np.isinf(np.frombuffer(payload[n:], np.float32)[5])
    json.loads(payload[:n], parse_constant=pytest.fail)


def test_model_config_is_tritons_model_configuration():
    fn = dataclasses.replace(FN, inputs=(TensorSpec("x", "FP32", (2, 4)), TensorSpec("m", "BOOL", (3,))))
    config = model_config(fn, [1, 2])
    assert config == {
        "name": "vadd",
        "platform": "dask-kaas",
        "backend": "dask-kaas",
        "max_batch_size": 0,
        "version_policy": {"specific": {"versions": [1, 2]}},
        "input": [
            {"name": "x", "data_type": "TYPE_FP32", "dims": [2, 4]},
            {"name": "m", "data_type": "TYPE_BOOL", "dims": [3]},
        ],
        "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [N]}],
    }


def test_statistics_count_each_tenants_calls_of_each_function_version():
    now = [1000.0]
    stats = InferenceStats(clock=lambda: now[0])
    v1, v2 = dataclasses.replace(FN, version=1), dataclasses.replace(FN, version=2)
    stats.record("alice", v1, True, 0.5)
    stats.record("alice", v1, True, 0.25)
    now[0] = 2000.5
    stats.record("alice", v1, False, 0.125)
    stats.record("bob", v1, True, 1.0)
    stats.record("alice", v2, True, 2.0)
    report = stats.report("alice", [(v2, [1, 2])])["model_stats"]
    assert [(s["name"], s["version"]) for s in report] == [("vadd", "1"), ("vadd", "2")]
    first = report[0]
    assert first["last_inference"] == 2000500 and first["inference_count"] == first["execution_count"] == 2
    assert first["inference_stats"]["success"] == {"count": 2, "ns": 750_000_000}
    assert first["inference_stats"]["fail"] == {"count": 1, "ns": 125_000_000}
    assert first["inference_stats"]["queue"] == {"count": 0, "ns": 0}
    assert report[1]["inference_stats"]["success"] == {"count": 1, "ns": 2_000_000_000}
    # bob sees his own call only; carol, none; another tenant's shared function shows its qualified name
    assert stats.report("bob", [(v1, [1])])["model_stats"][0]["inference_count"] == 1
    untouched = stats.report("carol", [(v1, [1])])["model_stats"][0]
    assert untouched["name"] == "alice:vadd" and untouched["inference_count"] == 0
    assert untouched["last_inference"] == 0
