"""The gateway's gRPC transport: Triton's ``inference.GRPCInferenceService`` on ``--grpc-port``.

Its messages against tritonclient's own generated ones (names, field numbers, bytes), the codec as
pure code, and a real ``dask-kaas gateway --grpc-port`` process (the REST tests' cluster, store and
tokens) called by ``tritonclient.grpc`` with bearer tokens in the metadata.
"""

import concurrent.futures
import json
import os
import re
import signal
import subprocess
import time

import numpy as np
import pytest

grpcclient = pytest.importorskip("tritonclient.grpc")
import grpc
import test_gateway
from google.protobuf import json_format
from procs import free_port
from test_gateway import N, call, vadd_function
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from dask_kaas.functions import function_from_doc
from dask_kaas.gateway.grpc_protocol import (
    FILE,
    METHODS,
    SERVICE,
    infer_document,
    infer_response,
    metadata_response,
    parameter_value,
    pb,
)
from dask_kaas.gateway.grpc_service import grpc_code
from dask_kaas.gateway.oip import OipError, build_call, model_metadata

env = test_gateway.env  # the REST tests' fixture: a cluster, a store with functions, tokens, a gateway process
TRITON_POOL = service_pb2.DESCRIPTOR.pool


# ------------------------------------------------------------------ the messages (pure)
def _walk(descriptor):
    yield descriptor
    for nested in descriptor.nested_types:
        yield from _walk(nested)


def _field(f):
    repeated = f.is_repeated if hasattr(f, "is_repeated") else f.label == f.LABEL_REPEATED  # protobuf < 6: label
    return (
        f.name,
        f.number,
        repeated,
        f.type,
        f.message_type and f.message_type.full_name,
        f.enum_type and f.enum_type.full_name,
        f.containing_oneof and f.containing_oneof.name,
    )


def test_every_message_field_and_method_is_tritons():
    """Same full names, field names, numbers, labels, types and oneofs as tritonclient's generated code;
    the service's methods take and answer the same messages."""
    checked = 0
    for top in FILE.message_type:
        for ours in _walk(pb.__dict__[top.name].DESCRIPTOR):
            theirs = TRITON_POOL.FindMessageTypeByName(ours.full_name)
            assert ours.GetOptions().map_entry == theirs.GetOptions().map_entry, ours.full_name
            for field in ours.fields:
                assert _field(field) == _field(theirs.fields_by_name[field.name]), ours.full_name
                checked += 1
    assert checked > 100
    for enum in FILE.enum_type:
        theirs = TRITON_POOL.FindEnumTypeByName(f"inference.{enum.name}")
        assert [(v.name, v.number) for v in enum.value] == [(v.name, v.number) for v in theirs.values]
    service = TRITON_POOL.FindServiceByName(SERVICE)
    for name, (request, response) in METHODS.items():
        method = service.methods_by_name[name]
        assert (method.input_type.name, method.output_type.name) == (request, response)


def _triton_request():
    request = service_pb2.ModelInferRequest(model_name="vadd", model_version="2", id="req-1")
    request.parameters["timeout"].int64_param = 5_000_000
    request.parameters["priority"].uint64_param = 2
    request.parameters["flag"].bool_param = True
    request.parameters["ratio"].double_param = 0.5
    request.parameters["tag"].string_param = "t"
    x = request.inputs.add(name="x", datatype="FP32", shape=[2, N // 2])
    x.parameters["content_type"].string_param = "np"
    request.raw_input_contents.append(np.arange(N, dtype=np.float32).tobytes())
    out = request.outputs.add(name="y")
    out.parameters["binary_data"].bool_param = True
    return request


def test_a_tritonclient_message_round_trips_through_ours_byte_for_byte():
    messages = [_triton_request()]
    typed = service_pb2.ModelInferRequest(model_name="m")
    typed.inputs.add(name="a", datatype="INT32", shape=[3]).contents.int_contents.extend([1, -2, 3])
    typed.inputs.add(name="b", datatype="BOOL", shape=[2]).contents.bool_contents.extend([True, False])
    messages.append(typed)
    response = service_pb2.ModelInferResponse(model_name="m", model_version="1", id="r")
    response.outputs.add(name="y", datatype="FP64", shape=[2]).parameters["p"].int64_param = -1
    response.raw_output_contents.append(b"\0" * 16)
    messages.append(response)
    config = service_pb2.ModelConfigResponse()
    json_format.ParseDict(
        {
            "name": "m",
            "platform": "dask-kaas",
            "max_batch_size": 0,
            "version_policy": {"specific": {"versions": [1, 3]}},
            "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [2, 3]}],
            "output": [{"name": "y", "data_type": "TYPE_UINT8", "dims": [4]}],
        },
        config.config,
    )
    messages.append(config)
    stats = service_pb2.ModelStatisticsResponse()
    json_format.ParseDict(
        {
            "model_stats": [
                {
                    "name": "m",
                    "version": "1",
                    "last_inference": 7,
                    "inference_count": 2,
                    "execution_count": 2,
                    "inference_stats": {"success": {"count": 2, "ns": 10}, "fail": {"count": 1, "ns": 3}},
                }
            ]
        },
        stats,
    )
    messages.append(stats)
    metadata = service_pb2.ModelMetadataResponse(name="m", versions=["1"], platform="p")
    metadata.inputs.add(name="x", datatype="FP32", shape=[-1, 4])
    messages.append(metadata)
    for message in messages:
        wire = message.SerializeToString(deterministic=True)  # maps in key order
        ours = getattr(pb, type(message).__name__).FromString(wire)
        assert ours.SerializeToString(deterministic=True) == wire, type(message).__name__
        assert json_format.MessageToDict(ours) == json_format.MessageToDict(message)
        assert type(message).FromString(ours.SerializeToString()) == message


def fn_of(doc=None, name="vadd"):
    return function_from_doc(doc or vadd_function(), name=name, namespace="alice")


def test_an_infer_request_becomes_the_rest_document():
    ours = pb.ModelInferRequest.FromString(_triton_request().SerializeToString())
    doc, binary = infer_document(ours)
    assert doc == {
        "id": "req-1",
        "parameters": {"timeout": 5_000_000, "priority": 2, "flag": True, "ratio": 0.5, "tag": "t"},
        "inputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": [2, N // 2],
                "parameters": {"content_type": "np", "binary_data_size": 4 * N},
            }
        ],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
    }
    assert binary == np.arange(N, dtype=np.float32).tobytes()
    assert parameter_value(pb.InferParameter()) is None
    # typed contents become data, checked as REST's JSON is
    fn = fn_of()
    typed = pb.ModelInferRequest()
    typed.inputs.add(name="x", datatype="FP32", shape=[N]).contents.fp32_contents.extend(range(N))
    call = build_call(*infer_document(typed), fn)
    np.testing.assert_array_equal(call.inputs["x"], np.arange(N, dtype=np.float32))
    answer = service_pb2.ModelInferResponse.FromString(
        infer_response(fn, call, {"y": np.arange(N, dtype=np.float32) * 2}).SerializeToString()
    )
    assert answer.model_name == "vadd" and answer.outputs[0].datatype == "FP32" and list(answer.outputs[0].shape) == [N]
    np.testing.assert_array_equal(np.frombuffer(answer.raw_output_contents[0], np.float32), np.arange(N) * 2)
    meta = service_pb2.ModelMetadataResponse.FromString(
        metadata_response(model_metadata(fn, [1, 2])).SerializeToString()
    )
    assert meta.versions == ["1", "2"] and meta.inputs[0].name == "x" and list(meta.inputs[0].shape) == [N]


def _request(datatype="FP32", shape=(N,), typed=False, nbytes=4 * N, extra=None, tenant=None):
    """An infer request of vadd's input, changed; ``tenant``: where a tenant parameter goes."""
    request = pb.ModelInferRequest()
    x = request.inputs.add(name="x", datatype=datatype, shape=shape)
    if typed:
        x.contents.fp32_contents.extend([0.0] * N)
    else:
        request.raw_input_contents.append(b"\0" * nbytes)
    if extra is not None:
        request.raw_input_contents.append(extra)
    if tenant is not None:
        target = {"request": request, "input": x, "output": request.outputs.add(name="y")}[tenant]
        target.parameters["tenant"].string_param = "bob"
    return request


@pytest.mark.parametrize(
    "request_, message",
    [
        (_request(extra=b"\0"), "raw_input_contents holds 2 tensors, the request has 1 inputs"),
        (_request(shape=[N - 1]), r"input 'x': shape \[255\], the model takes \[256\]"),
        (_request(datatype="INT32"), "input 'x': datatype 'INT32', the model takes FP32"),
        (_request(nbytes=4 * N - 4), "input 'x': 1020 bytes of binary data"),
        (_request(datatype="FP16", typed=True), "input 'x': 'FP16' contents go in raw_input_contents"),
        (
            _request(datatype="INT32", typed=True),
            "input 'x': 'INT32' contents go in contents.int_contents, got contents.fp32_contents",
        ),
        (_request(tenant="request"), "tenant is the bearer token's"),
        (_request(tenant="input"), "input 'x': parameter 'tenant' is not accepted"),
        (_request(tenant="output"), "output 'y': parameter 'tenant' is not accepted"),
    ],
)
def test_bad_infer_requests_are_400_naming_the_tensor(request_, message):
    with pytest.raises(OipError, match=message) as info:
        build_call(*infer_document(request_), fn_of())
    assert info.value.status == 400


def test_no_contents_and_both_kinds_of_contents_are_refused():
    request = pb.ModelInferRequest()
    request.inputs.add(name="x", datatype="FP32", shape=[N])
    with pytest.raises(OipError, match="input 'x': no contents and no raw_input_contents"):
        infer_document(request)
    request.inputs[0].contents.fp32_contents.append(1.0)
    request.raw_input_contents.append(b"\0" * 4 * N)
    with pytest.raises(OipError, match="input 'x': both contents and raw_input_contents"):
        infer_document(request)


def test_http_statuses_map_to_grpc_codes():
    expected = {
        400: "INVALID_ARGUMENT",
        401: "UNAUTHENTICATED",
        403: "PERMISSION_DENIED",
        404: "NOT_FOUND",
        413: "RESOURCE_EXHAUSTED",
        422: "INVALID_ARGUMENT",
        429: "RESOURCE_EXHAUSTED",
        500: "INTERNAL",
        503: "UNAVAILABLE",
        504: "DEADLINE_EXCEEDED",
    }
    assert {status: grpc_code(status).name for status in expected} == expected


# ------------------------------------------------------------------ a real gateway, called by tritonclient.grpc
def bits_function(n=N, datatype="INT32", shape=(N,), out_datatype="INT32", out_shape=(N,)):
    """``vadd`` on buffers that declare no dtype: the tensors are any datatype of the same bytes, which the
    float32 kernel reads as floats (so the answer is NumPy's ``(x.view(f32) + w).view(...)``)."""
    doc = vadd_function(n)
    for b in doc["request"]["buffers"]:
        if b["name"] != "w":
            del b["dtype"]
    doc["inputs"] = [{"name": "x", "datatype": datatype, "shape": list(shape)}]
    doc["outputs"] = [{"name": "y", "datatype": out_datatype, "shape": list(out_shape)}]
    return doc


@pytest.fixture(scope="module")
def grpc_env(env):
    """The REST tests' gateway, restarted with ``--grpc-port``, and two functions of other datatypes."""
    env["repo"].put("bits", bits_function(), namespace="alice")
    env["repo"].put(
        "bytes",
        bits_function(datatype="UINT8", shape=(N // 4, 16), out_datatype="FP64", out_shape=(N // 2,)),
        namespace="alice",
    )
    gw, port = env["gw"], free_port()
    gw.args += ["--grpc-port", str(port)]
    env["procs"].kill("gateway")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DASK_KAAS__GATEWAY__METRICS_PUBLIC", "true")  # the gRPC calls' counts are read on /metrics
        gw.start()
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    yield {**env, "grpc_url": f"127.0.0.1:{port}", "grpc_port": port, "triton": client}
    client.close()


def bearer(token):
    return {"authorization": f"Bearer {token}"}  # gRPC metadata keys are lower case


def fp32_input(x, name="x", datatype="FP32"):
    inp = grpcclient.InferInput(name, list(x.shape), datatype)
    inp.set_data_from_numpy(x)
    return inp


def status_of(info) -> str:
    return info.value.status().rsplit(".", 1)[-1]


@pytest.mark.slow
def test_tritonclient_grpc_calls_as_on_triton(grpc_env):
    client, tok, w = grpc_env["triton"], grpc_env["tokens"], grpc_env["weights"]
    assert client.is_server_live() and client.is_server_ready()
    server = client.get_server_metadata()
    assert server.name == "dask-kaas" and "model_repository" in server.extensions
    assert client.is_model_ready("vadd", headers=bearer(tok["alice"]))
    meta = client.get_model_metadata("vadd", headers=bearer(tok["alice"]))
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("x", "FP32", [N])]
    assert meta.versions == ["1"] and meta.platform == "dask-kaas"
    rest = rest_json(grpc_env, "/v2/models/vadd", tok["alice"])
    assert json_format.ParseDict(rest, service_pb2.ModelMetadataResponse()) == meta
    x = np.linspace(-1, 1, N, dtype=np.float32)
    result = client.infer("vadd", [fp32_input(x)], headers=bearer(tok["alice"]), request_id="r-1")
    np.testing.assert_allclose(result.as_numpy("y"), x + w["alice"], rtol=1e-6)
    assert result.get_response().id == "r-1" and result.get_response().model_version == "1"
    # a shared function of another tenant reads its owner's weights; bob's own vadd, his
    result = client.infer(
        "shared_vadd",
        [fp32_input(x)],
        headers=bearer(tok["carol"]),
        model_version="1",
        outputs=[grpcclient.InferRequestedOutput("y")],
    )
    np.testing.assert_allclose(result.as_numpy("y"), x + w["public"], rtol=1e-6)
    result = client.infer("vadd", [fp32_input(x)], headers=bearer(tok["bob"]), timeout=60_000_000)
    np.testing.assert_allclose(result.as_numpy("y"), x + w["bob"], rtol=1e-6)
    index = grpc_env["triton"].get_model_repository_index(headers=bearer(tok["carol"]), as_json=True)
    assert {m["name"] for m in index["models"]} == {"public:shared_vadd"}


@pytest.mark.slow
def test_concurrent_grpc_callers_each_get_their_own_answer(grpc_env):
    client, tok, w = grpc_env["triton"], grpc_env["tokens"], grpc_env["weights"]

    def one(i):
        tenant = ("alice", "bob")[i % 2]
        x = np.full(N, i, np.float32)
        y = client.infer("vadd", [fp32_input(x)], headers=bearer(tok[tenant])).as_numpy("y")
        np.testing.assert_allclose(y, x + w[tenant], rtol=1e-6)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        for f in [pool.submit(one, i) for i in range(64)]:
            f.result(timeout=300)


@pytest.mark.slow
def test_other_datatypes_carry_their_bytes_exactly(grpc_env):
    client, tok, w = grpc_env["triton"], grpc_env["tokens"]["alice"], grpc_env["weights"]["alice"]
    floats = np.random.default_rng(1).standard_normal(N).astype(np.float32)
    x = floats.view(np.int32)
    y = client.infer("bits", [fp32_input(x, datatype="INT32")], headers=bearer(tok)).as_numpy("y")
    assert y.dtype == np.int32 and np.array_equal(y, (floats + w).view(np.int32))
    raw = floats.view(np.uint8).reshape(N // 4, 16)
    y = client.infer("bytes", [fp32_input(raw, datatype="UINT8")], headers=bearer(tok)).as_numpy("y")
    assert y.dtype == np.float64 and y.shape == (N // 2,) and np.array_equal(y, (floats + w).view(np.float64))


def stub_call(grpc_env, method, request, token=None):
    with grpc.insecure_channel(grpc_env["grpc_url"]) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        return getattr(stub, method).with_call(
            request, metadata=tuple(bearer(token).items()) if token else None, timeout=120
        )


@pytest.mark.slow
def test_typed_contents_are_read_as_rest_json_data(grpc_env):
    tok, w = grpc_env["tokens"]["alice"], grpc_env["weights"]["alice"]
    x = np.arange(N, dtype=np.float32)
    request = service_pb2.ModelInferRequest(model_name="vadd")
    request.inputs.add(name="x", datatype="FP32", shape=[N]).contents.fp32_contents.extend(x.tolist())
    response, _ = stub_call(grpc_env, "ModelInfer", request, tok)
    np.testing.assert_allclose(np.frombuffer(response.raw_output_contents[0], np.float32), x + w, rtol=1e-6)
    request = service_pb2.ModelInferRequest(model_name="bits")
    request.inputs.add(name="x", datatype="INT32", shape=[N]).contents.int_contents.extend(x.view(np.int32).tolist())
    response, _ = stub_call(grpc_env, "ModelInfer", request, tok)
    assert np.array_equal(np.frombuffer(response.raw_output_contents[0], np.int32), (x + w).view(np.int32))


def _error(call_, *args, **kwargs):
    with pytest.raises(InferenceServerException) as info:
        call_(*args, **kwargs)
    return status_of(info), info.value.message()


@pytest.mark.slow
def test_errors_are_grpc_statuses_naming_what_is_wrong(grpc_env):
    client, tok = grpc_env["triton"], grpc_env["tokens"]
    x = fp32_input(np.zeros(N, np.float32))
    assert _error(client.infer, "vadd", [x])[0] == "UNAUTHENTICATED"
    assert _error(client.infer, "vadd", [x], headers=bearer("kaas_not-a-token"))[0] == "UNAUTHENTICATED"
    assert _error(client.get_model_metadata, "vadd")[0] == "UNAUTHENTICATED"
    # bob's private function answers alice exactly as a missing one does
    missing = _error(client.infer, "nothing", [x], headers=bearer(tok["alice"]))
    for name in ("secret", "bob:secret"):
        got = _error(client.infer, name, [x], headers=bearer(tok["alice"]))
        assert got == (missing[0], missing[1].replace("'nothing'", repr(name))) and got[0] == "NOT_FOUND"
        got = _error(client.get_model_metadata, name, headers=bearer(tok["alice"]))
        assert got[0] == "NOT_FOUND" and "secret" in got[1]
    assert _error(client.is_model_ready, "secret", headers=bearer(tok["alice"]))[0] == "NOT_FOUND"
    code, message = _error(client.infer, "vadd", [x], model_version="7", headers=bearer(tok["alice"]))
    assert code == "NOT_FOUND" and "no version 7" in message
    code, message = _error(
        client.infer, "vadd", [fp32_input(np.zeros(N - 1, np.float32))], headers=bearer(tok["alice"])
    )
    assert code == "INVALID_ARGUMENT" and "input 'x': shape [255], the model takes [256]" in message
    code, message = _error(client.infer, "vadd", [x], headers=bearer(tok["alice"]), parameters={"tenant": "bob"})
    assert code == "INVALID_ARGUMENT" and "the tenant is the bearer token's" in message
    code, message = _error(client.infer, "broken", [], headers=bearer(tok["alice"]))
    assert code == "INTERNAL" and "KernelError" in message
    # larger than the gateway's --max-body (1 MiB) is refused by gRPC itself
    big = service_pb2.ModelInferRequest(model_name="vadd", raw_input_contents=[b"\0" * (2 << 20)])
    with pytest.raises(grpc.RpcError) as info:
        stub_call(grpc_env, "ModelInfer", big, tok["alice"])
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.RpcError) as info:  # bytes that are no ModelInferRequest
        with grpc.insecure_channel(grpc_env["grpc_url"]) as channel:
            channel.unary_unary(f"/{SERVICE}/ModelInfer")(b"\xff\xff\xff", metadata=tuple(bearer(tok["alice"]).items()))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # the gateway goes on serving
    assert (
        client.infer("vadd", [x], headers=bearer(tok["alice"])).as_numpy("y").tolist()
        == grpc_env["weights"]["alice"].tolist()
    )


@pytest.mark.slow
def test_rate_limits_are_resource_exhausted_with_retry_after(grpc_env):
    x = service_pb2.ModelInferRequest(model_name="shared_vadd", raw_input_contents=[b"\0" * 4 * N])
    x.inputs.add(name="x", datatype="FP32", shape=[N])
    stub_call(grpc_env, "ModelInfer", x, grpc_env["tokens"]["dave"])
    with pytest.raises(grpc.RpcError) as info:
        stub_call(grpc_env, "ModelInfer", x, grpc_env["tokens"]["dave"])
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "rate limit" in info.value.details()
    assert int(dict(info.value.trailing_metadata())["retry-after"]) >= 90


def rest_json(grpc_env, path, token):
    status, _, raw = call(grpc_env["gw"], "GET", path, token=token)
    assert status == 200, raw[:300]
    return json.loads(raw)


@pytest.mark.slow
def test_model_config_and_statistics_as_tritonclient_reads_them_and_as_rest_answers(grpc_env):
    client, tok = grpc_env["triton"], grpc_env["tokens"]
    config = client.get_model_config("vadd", headers=bearer(tok["alice"])).config
    assert (config.name, config.max_batch_size, list(config.version_policy.specific.versions)) == ("vadd", 0, [1])
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [("x", model_config_pb2.TYPE_FP32, [N])]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [("y", model_config_pb2.TYPE_FP32, [N])]
    rest = rest_json(grpc_env, "/v2/models/vadd/config", tok["alice"])
    assert json_format.ParseDict(rest, model_config_pb2.ModelConfig()) == config  # every field REST has, the same
    x = fp32_input(np.ones(N, np.float32))
    for _ in range(3):
        client.infer("secret", [x], headers=bearer(tok["bob"]))
    _error(client.infer, "secret", [fp32_input(np.ones(N - 1, np.float32))], headers=bearer(tok["bob"]))
    # a REST call counts in the same statistics
    assert (
        call(grpc_env["gw"], "POST", "/v2/models/secret/infer", test_gateway.infer_json(np.ones(N)), token=tok["bob"])[
            0
        ]
        == 200
    )
    stats = client.get_inference_statistics("secret", headers=bearer(tok["bob"]))
    [entry] = stats.model_stats
    assert (entry.name, entry.version) == ("secret", "1")
    assert entry.inference_stats.success.count == entry.inference_count == 4
    assert entry.inference_stats.fail.count == 1 and entry.inference_stats.success.ns > 0
    assert abs(entry.last_inference / 1000 - time.time()) < 60
    rest = rest_json(grpc_env, "/v2/models/secret/stats", tok["bob"])
    assert json_format.ParseDict(rest, service_pb2.ModelStatisticsResponse()) == stats
    everything = client.get_inference_statistics(headers=bearer(tok["bob"]))
    assert "secret" in {s.name for s in everything.model_stats}
    assert (
        json_format.ParseDict(
            rest_json(grpc_env, "/v2/models/stats", tok["bob"]), service_pb2.ModelStatisticsResponse()
        )
        == everything
    )
    # alice's calls of "secret" were refused before any function was found: nothing of bob's shows
    assert _error(client.get_inference_statistics, "secret", headers=bearer(tok["alice"]))[0] == "NOT_FOUND"
    alice = client.get_inference_statistics(headers=bearer(tok["alice"]), as_json=True).get("model_stats", [])
    assert "secret" not in json.dumps(alice)


@pytest.mark.slow
def test_grpc_calls_are_counted_on_metrics_and_logged(grpc_env):
    status, _, raw = call(grpc_env["gw"], "GET", "/metrics")
    text = raw.decode()
    assert status == 200
    assert 'dask_kaas_gateway_requests_total{model="alice:vadd",status="200",tenant="alice"}' in text
    assert 'dask_kaas_gateway_errors_total{status="401",tenant="-"}' in text
    assert 'dask_kaas_gateway_errors_total{status="404",tenant="alice"}' in text
    log = grpc_env["procs"].log("gateway")
    assert re.search(rf"gRPC \(Open Inference Protocol, {SERVICE}\) on 127\.0\.0\.1:{grpc_env['grpc_port']}\b", log)


@pytest.mark.slow
def test_the_grpc_port_comes_from_kaas_gateway_grpc_port_and_a_port_in_use_is_an_error(grpc_env, monkeypatch):
    procs, alice = grpc_env["procs"], grpc_env["tokens"]["alice"]
    args = [
        os.path.join(test_gateway.BIN, "dask-kaas"),
        "gateway",
        "--scheduler",
        grpc_env["client"].scheduler.address,
        "--store",
        grpc_env["store"].url,
        "--tokens",
        grpc_env["tokens_path"],
    ]
    monkeypatch.setenv("DASK_KAAS__GATEWAY__GRPC_PORT", "0")  # 0: a free port, which the log says
    procs.start("gateway0", *args, "--port", str(free_port()))
    deadline = time.monotonic() + 120
    while not (found := re.search(r"gRPC .* on 127\.0\.0\.1:(\d+)", procs.log("gateway0"))):
        assert time.monotonic() < deadline and procs.procs["gateway0"].poll() is None, procs.log("gateway0")
        time.sleep(0.2)
    try:
        with grpcclient.InferenceServerClient(f"127.0.0.1:{found[1]}") as client:
            assert client.is_server_live()
            assert client.get_model_metadata("vadd", headers=bearer(alice)).name == "vadd"
    finally:
        procs.kill("gateway0", signal.SIGTERM)
    taken = subprocess.run(
        [*args, "--port", str(free_port()), "--grpc-port", str(grpc_env["grpc_port"])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert taken.returncode != 0
    assert f"could not serve gRPC on 127.0.0.1:{grpc_env['grpc_port']}" in taken.stdout + taken.stderr
