"""The gateway against the Open Inference Protocol and the clients that speak it, on a real `dask-kaas gateway`
process (test_gateway's module-scoped cluster and gateway): kserve's request bodies, health bodies, Triton's
model configuration and statistics extensions through tritonclient, JSON data and replies that stay JSON."""

import json
import os
import time

import numpy as np
import pytest
import test_gateway
from procs import Processes, free_port
from test_gateway import BIN, Gateway, N, bearer, call, infer_json, triton, tritonclient_http, vadd_function

pytestmark = pytest.mark.slow
env = test_gateway.env  # test_gateway's cluster, store, tokens and gateway process (module-scoped: one here)


def strict_json(raw: bytes):
    """JSON as orjson (kserve's parser) reads it: no NaN or Infinity."""

    def refuse(constant):
        raise AssertionError(f"{constant} in a reply: not JSON")

    return json.loads(raw, parse_constant=refuse)


@pytest.fixture(scope="module")
def gw(env):
    store, repo = env["store"], env["repo"]
    nan_w = np.zeros(N, np.float32)
    nan_w[3], nan_w[5] = np.nan, np.inf
    store.put("model/nanw", nan_w, namespace="alice")
    repo.put("nan_vadd", vadd_function(key="model/nanw"), namespace="alice")
    repo.put("stats_vadd", vadd_function(), namespace="alice")
    repo.put("stats_vadd", vadd_function(), namespace="bob")
    repo.put("stats_shared", vadd_function(), namespace="public")
    repo.put("pair", vadd_function(n=2), namespace="alice")
    return env["gw"]


# the bodies kserve 0.21's InferRequest.to_rest() produces (kserve's own output): it always sends id and
# model_name; with binary inputs it sends the JSON header, then the raw bytes, as application/octet-stream
def kserve_json(model, x, request_id="3f0c2b5e-kserve"):
    return {
        "id": request_id,
        "model_name": model,
        "inputs": [{"name": "x", "shape": [len(x)], "datatype": "FP32", "data": [float(v) for v in x]}],
    }


def kserve_binary(model, x, request_id="3f0c2b5e-kserve"):
    header = json.dumps(
        {
            "id": request_id,
            "model_name": model,
            "inputs": [
                {"name": "x", "shape": [len(x)], "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        },
        separators=(",", ":"),
    ).encode()
    return header + x.tobytes(), {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }


def test_health_answers_have_the_specs_bodies(gw):
    assert call(gw, "GET", "/v2/health/live")[::2] == (200, b'{"live":true}')
    status, headers, raw = call(gw, "GET", "/v2/health/ready")
    assert status == 200 and strict_json(raw) == {"ready": True} and headers["content-type"] == "application/json"
    client = triton(gw)
    assert client.is_server_live() and client.is_server_ready()
    assert {"model_configuration", "statistics"} <= set(client.get_server_metadata()["extensions"])


def test_not_ready_is_503_with_ready_false(env, tmp_path):
    procs = Processes(tmp_path)
    port = free_port()
    procs.start(
        "scheduler",
        os.path.join(BIN, "dask-kaas"),
        "scheduler",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-dashboard",
    )
    try:
        idle = Gateway(procs, f"tcp://127.0.0.1:{port}", env["store"], env["tokens_path"], free_port())
        procs.start("gateway", *idle.args)
        deadline = time.monotonic() + 120
        while call(idle, "GET", "/v2/health/live")[0] != 200:
            assert time.monotonic() < deadline, procs.log("gateway")
            time.sleep(0.2)
        status, _, raw = call(idle, "GET", "/v2/health/ready")  # a scheduler with no worker
        assert status == 503 and strict_json(raw) == {"ready": False}
        assert not triton(idle).is_server_ready()
    finally:
        procs.stop_all()


def test_kserve_request_bodies_infer(gw, env):
    tok, w = env["tokens"]["alice"], env["weights"]["alice"]
    x = np.linspace(-1, 1, N, dtype=np.float32)
    status, _, raw = call(
        gw,
        "POST",
        "/v2/models/vadd/infer",
        kserve_json("vadd", x),
        token=tok,
        headers={"Content-Type": "application/json"},
    )
    answer = strict_json(raw)
    assert status == 200 and answer["id"] == "3f0c2b5e-kserve" and answer["model_name"] == "vadd"
    np.testing.assert_allclose(answer["outputs"][0]["data"], x + w, rtol=1e-6)
    body, headers = kserve_binary("vadd", x)
    status, got, raw = call(gw, "POST", "/v2/models/vadd/versions/1/infer", body, token=tok, headers=headers)
    n = int(got["inference-header-content-length"])
    assert status == 200 and strict_json(raw[:n])["outputs"][0]["parameters"] == {"binary_data_size": 4 * N}
    np.testing.assert_allclose(np.frombuffer(raw[n:], np.float32), x + w, rtol=1e-6)
    # the spec's optional fields and fields it does not name; a qualified model_name names the same function
    doc = {**kserve_json("alice:vadd", x), "model_version": "1", "parameters": {"note": "x"}, "trace": {"a": 1}}
    assert call(gw, "POST", "/v2/models/vadd/infer", doc, token=tok)[0] == 200
    shared = kserve_json("public:shared_vadd", x)
    assert call(gw, "POST", "/v2/models/shared_vadd/infer", shared, token=env["tokens"]["carol"])[0] == 200


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model_name": "shared_vadd"}, "model_name 'shared_vadd' is not the model called, 'vadd'"),
        ({"model_name": "bob:vadd"}, "model_name 'bob:vadd' is not the model called"),
        ({"model_version": "2"}, "model_version '2' is not the version called, '1'"),
        ({"tenant": "bob"}, "the tenant is the bearer token's"),
        ({"parameters": {"tenant": "bob"}}, "the tenant is the bearer token's"),
        (
            {
                "inputs": [
                    {"name": "x", "shape": [N], "datatype": "FP32", "data": [0.0] * N, "parameters": {"tenant": "bob"}}
                ]
            },
            "input 'x': parameter 'tenant'",
        ),
        ({"outputs": [{"name": "y", "parameters": {"tenant": "bob"}}]}, "output 'y': parameter 'tenant'"),
        ({"outputs": [{"name": "y"}] * 2}, r"outputs[1]: output 'y' is requested twice"),
    ],
)
def test_a_foreign_model_a_tenant_or_a_repeated_output_is_400(gw, env, change, message):
    doc = {**kserve_json("vadd", np.zeros(N)), **change}
    status, _, raw = call(gw, "POST", "/v2/models/vadd/infer", doc, token=env["tokens"]["alice"])
    assert status == 400 and message in strict_json(raw)["error"], raw[:300]


def test_kserves_own_rest_client(gw, env):
    """kserve's InferenceRESTClient where it is installed: not a test dependency, as kserve 0.21 pins
    psutil<6 (distributed's newest is 7); the bodies it sends are tested above without it."""
    import asyncio

    kserve = pytest.importorskip("kserve")
    from kserve.inference_client import RESTConfig

    tok, w = env["tokens"]["alice"], env["weights"]["alice"]
    x = np.linspace(-1, 1, N, dtype=np.float32)

    async def run():
        client = kserve.InferenceRESTClient(RESTConfig(protocol="v2", timeout=120))
        base = f"http://{gw.url}"
        try:
            assert await client.is_server_live(base) and await client.is_server_ready(base)
            results = []
            for binary in (False, True):
                inp = kserve.InferInput("x", [N], "FP32")
                inp.set_data_from_numpy(x, binary_data=binary)
                request = kserve.InferRequest(model_name="vadd", infer_inputs=[inp])
                response = await client.infer(
                    base, request, model_name="vadd", headers={"Authorization": f"Bearer {tok}"}
                )
                results.append(response.outputs[0].as_numpy())
            return results
        finally:
            await client.close()

    for y in asyncio.run(run()):
        np.testing.assert_allclose(y, x + w, rtol=1e-6)


def test_tritonclient_reads_the_model_configuration(gw, env):
    tok = env["tokens"]["alice"]
    client = triton(gw)
    config = client.get_model_config("vadd", headers=bearer(tok))
    assert config["name"] == "vadd" and config["platform"] == config["backend"] == "dask-kaas"
    assert config["max_batch_size"] == 0
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [N]}]
    assert config["output"] == [{"name": "y", "data_type": "TYPE_FP32", "dims": [N]}]
    assert client.get_model_config("vadd", "1", headers=bearer(tok)) == config
    assert client.get_model_config("public:shared_vadd", headers=bearer(tok))["name"] == "shared_vadd"
    for model, version, token, code in [
        ("vadd", "", None, "401"),
        ("secret", "", tok, "404"),
        ("bob:secret", "", tok, "404"),
        ("vadd", "9", tok, "404"),
    ]:
        with pytest.raises(tritonclient_http.InferenceServerException, match=code):
            client.get_model_config(model, version, headers=bearer(token) if token else None)


def test_tritonclient_reads_each_tenants_own_statistics(gw, env):
    tokens = env["tokens"]
    client = triton(gw)

    def infer(model, token, x):
        inp = tritonclient_http.InferInput("x", [len(x)], "FP32")
        inp.set_data_from_numpy(x)
        return client.infer(model, [inp], headers=bearer(token))

    started = time.time()
    for i in range(3):
        infer("stats_vadd", tokens["alice"], np.full(N, i, np.float32))
    with pytest.raises(tritonclient_http.InferenceServerException, match="shape"):
        infer("stats_vadd", tokens["alice"], np.zeros(N - 1, np.float32))  # found, then refused: a failure
    infer("stats_vadd", tokens["bob"], np.zeros(N, np.float32))
    infer("stats_shared", tokens["bob"], np.zeros(N, np.float32))
    infer("stats_shared", tokens["carol"], np.zeros(N, np.float32))
    infer("stats_shared", tokens["carol"], np.zeros(N, np.float32))

    stats = client.get_inference_statistics("stats_vadd", headers=bearer(tokens["alice"]))["model_stats"]
    assert [(s["name"], s["version"]) for s in stats] == [("stats_vadd", "1")]
    s = stats[0]
    assert s["inference_count"] == s["execution_count"] == 3
    assert s["inference_stats"]["success"]["count"] == 3 and s["inference_stats"]["success"]["ns"] > 0
    assert s["inference_stats"]["fail"]["count"] == 1
    assert started * 1000 - 1000 <= s["last_inference"] <= time.time() * 1000 + 1000
    assert client.get_inference_statistics("stats_vadd", "1", headers=bearer(tokens["alice"]))["model_stats"] == stats
    bob = client.get_inference_statistics("stats_vadd", headers=bearer(tokens["bob"]))["model_stats"][0]
    assert bob["inference_count"] == 1 and bob["inference_stats"]["fail"]["count"] == 0
    # a shared function: each tenant counts its own calls
    for tenant, count in [("alice", 0), ("bob", 1), ("carol", 2)]:
        shared = client.get_inference_statistics("stats_shared", headers=bearer(tokens[tenant]))["model_stats"]
        assert shared[0]["name"] == "public:stats_shared" and shared[0]["inference_count"] == count
    everything = client.get_inference_statistics(headers=bearer(tokens["alice"]))["model_stats"]
    names = {s["name"] for s in everything}
    assert {"vadd", "stats_vadd", "public:stats_shared", "public:shared_vadd"} <= names
    assert not any(name.startswith("bob") or name == "secret" for name in names)
    for model, token, code in [
        ("stats_vadd", None, "401"),
        ("secret", tokens["alice"], "404"),
        ("bob:stats_vadd", tokens["alice"], "404"),
    ]:
        with pytest.raises(tritonclient_http.InferenceServerException, match=code):
            client.get_inference_statistics(model, headers=bearer(token) if token else None)
    assert call(gw, "GET", "/v2/models/stats")[0] == 401


@pytest.mark.parametrize(
    "data, message",
    [
        (b"[1, NaN]", "NaN is not a JSON value"),
        (b"[1, Infinity]", "Infinity is not a JSON value"),
        (b"[null, 1]", "input 'x': data is not FP32: element 0 is null"),
        (b"[1, true]", "input 'x': data is not FP32: element 1 is true"),
        (b"[1, 1e39]", "input 'x': data is not FP32: element 1 (1e+39) is beyond FP32's range"),
        (b"[[1, 2], [3]]", "input 'x': data must be a flat list of 2 elements or lists nested as [2]"),
        (b"[1, 2, 3]", "input 'x': data holds 3 elements, the shape needs 2"),
    ],
)
def test_json_data_that_json_or_the_datatype_cannot_hold_is_400(gw, env, data, message):
    body = b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": %s}]}' % data
    status, _, raw = call(gw, "POST", "/v2/models/pair/infer", body, token=env["tokens"]["alice"])
    assert status == 400 and message in strict_json(raw)["error"], raw[:300]


def test_a_non_finite_output_is_422_as_json_and_fine_as_binary(gw, env):
    tok = env["tokens"]["alice"]
    status, _, raw = call(gw, "POST", "/v2/models/nan_vadd/infer", infer_json(np.ones(N)), token=tok)
    error = strict_json(raw)["error"]
    assert status == 422 and "output 'y': element 3 is nan" in error and '"binary_data": true' in error
    y = triton(gw).infer("nan_vadd", [_binary(np.ones(N, np.float32))], headers=bearer(tok)).as_numpy("y")
    assert np.isnan(y[3]) and np.isinf(y[5]) and y[0] == 1
    as_binary = infer_json(np.ones(N), parameters={"binary_data_output": True})
    assert call(gw, "POST", "/v2/models/nan_vadd/infer", as_binary, token=tok)[0] == 200


def _binary(x):
    inp = tritonclient_http.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp
