"""The Open Inference Protocol gateway, end to end: a `dask-kaas gateway` process over a LocalKaasCluster,
called by tritonclient (a client no one here wrote), curl and plain HTTP."""

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from click.testing import CliRunner
from distributed import Client
from procs import Processes, free_port

from dask_kaas import BufferStore, LocalKaasCluster, cluster_state
from dask_kaas.cli import main as cli
from dask_kaas.functions import FunctionRepository
from dask_kaas.gateway.tokens import add_token

tritonclient_http = pytest.importorskip("tritonclient.http")

pytestmark = pytest.mark.slow
BIN = os.path.dirname(sys.executable)
N = 256
METRICS_TOKEN = "kaas_metrics-scraper-token"  # the gateways' kaas.gateway.metrics-token: /metrics is the operator's


def vadd_function(n=N, key="model/w"):
    return {
        "request": {
            "buffers": [
                {"name": "x", "size": 4 * n, "dtype": "float32", "ephemeral": True},
                {"name": "w", "size": 4 * n, "key": key, "const": True, "dtype": "float32"},
                {"name": "y", "size": 4 * n, "dtype": "float32", "ephemeral": True},
            ],
            "kernels": [
                {
                    "library": "builtin",
                    "kernel": "vadd",
                    "grid": [-(-n // 128)],
                    "block": [128],
                    "literals": [{"type": "i", "value": n}],
                    "arguments": [["x", "i"], ["w", "i"], ["y", "o"]],
                }
            ],
        },
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [n]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [n]}],
    }


BROKEN = {
    "buffers": [{"name": "y", "size": 16, "dtype": "float32", "ephemeral": True}],
    "kernels": [
        {
            "library": {"name": "notwin", "kind": "source", "source": 'extern "C" __global__ void k(float* y) { }'},
            "kernel": "k",
            "grid": [1],
            "block": [1],
            "arguments": [["y", "o"]],
        }
    ],
}


class Gateway:
    def __init__(self, procs, scheduler, store, tokens, port):
        self.procs, self.port = procs, port
        self.args = [
            os.path.join(BIN, "dask-kaas"),
            "gateway",
            "--scheduler",
            scheduler,
            "--store",
            store.url,
            "--tokens",
            tokens,
            "--port",
            str(port),
            "--max-body",
            "1MiB",
        ]
        self.url = f"127.0.0.1:{port}"
        self.env = {"DASK_KAAS__GATEWAY__METRICS_TOKEN": METRICS_TOKEN}  # settings of this gateway

    def start(self):
        env = {**os.environ, "DASK_KAAS__STORE_SHARED": '["public"]', **self.env}
        log = open(self.procs.directory / "gateway.log", "a")
        proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.procs.procs["gateway"] = proc
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, self.procs.log("gateway")
            if call(self, "GET", "/v2/health/ready")[0] == 200:
                return
            time.sleep(0.2)
        raise AssertionError("the gateway did not become ready:\n" + self.procs.log("gateway"))


def call(gw, method, path, body=None, token=None, headers=None):
    """(status, headers, body) of one HTTP call to the gateway."""
    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {token}"
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    req = urllib.request.Request(f"http://{gw.url}{path}", data=body, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()
    except (urllib.error.URLError, ConnectionError):
        return None, {}, b""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("gateway")
    store = BufferStore(str(root / "store"), shared=["public"])
    rng = np.random.default_rng(0)
    weights = {ns: rng.standard_normal(N).astype(np.float32) for ns in ("alice", "bob", "public")}
    for ns, w in weights.items():
        store.put("model/w", w, namespace=ns)
    repo = FunctionRepository(store)
    repo.put("vadd", vadd_function(), namespace="alice")
    repo.put("vadd", vadd_function(), namespace="bob")
    repo.put("secret", vadd_function(), namespace="bob")
    repo.put("shared_vadd", vadd_function(), namespace="public")
    repo.put("broken", BROKEN, namespace="alice")
    tokens_path = str(root / "tokens.yaml")
    tokens = {t: add_token(tokens_path, t) for t in ("alice", "bob", "carol")}
    tokens["dave"] = add_token(tokens_path, "dave", rate=0.01, burst=1)  # one call, then one per 100 s
    procs = Processes(root)
    with (
        LocalKaasCluster(n_workers=2, device="host", store=store, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        gw = Gateway(procs, cluster.scheduler_address, store, tokens_path, free_port())
        gw.start()
        try:
            yield {
                "gw": gw,
                "store": store,
                "weights": weights,
                "tokens": tokens,
                "client": client,
                "repo": repo,
                "procs": procs,
                "tokens_path": tokens_path,
            }
        finally:
            procs.stop_all()


def triton(gw):
    return tritonclient_http.InferenceServerClient(gw.url, connection_timeout=120, network_timeout=120)


def bearer(token):
    return {"Authorization": f"Bearer {token}"}  # a fresh dict each call: tritonclient adds headers to it


def test_tritonclient_calls_with_binary_and_json_tensors(env):
    gw, tok, w = env["gw"], env["tokens"]["alice"], env["weights"]
    client = triton(gw)
    assert client.is_server_live() and client.is_server_ready()
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    meta = client.get_model_metadata("vadd", headers=bearer(tok))
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [N]}] and meta["versions"] == ["1"]
    assert client.is_model_ready("vadd", headers=bearer(tok))
    x = np.linspace(-1, 1, N, dtype=np.float32)
    binary = tritonclient_http.InferInput("x", [N], "FP32")
    binary.set_data_from_numpy(x)  # binary tensor extension, binary outputs: tritonclient's defaults
    result = client.infer("vadd", [binary], headers=bearer(tok))
    np.testing.assert_allclose(result.as_numpy("y"), x + w["alice"], rtol=1e-6)
    as_json = tritonclient_http.InferInput("x", [N], "FP32")
    as_json.set_data_from_numpy(2 * x, binary_data=False)
    result = client.infer(
        "vadd",
        [as_json],
        headers=bearer(tok),
        model_version="1",
        outputs=[tritonclient_http.InferRequestedOutput("y", binary_data=False)],
    )
    np.testing.assert_allclose(result.as_numpy("y"), 2 * x + w["alice"], rtol=1e-6)
    assert result.get_response()["model_version"] == "1"
    # a shared function reads its owner's weights, whoever calls it
    result = client.infer("shared_vadd", [binary], headers=bearer(env["tokens"]["carol"]))
    np.testing.assert_allclose(result.as_numpy("y"), x + w["public"], rtol=1e-6)
    with pytest.raises(tritonclient_http.InferenceServerException, match="401"):
        client.infer("vadd", [binary])


def test_curl_calls_a_function_registered_by_the_command(env, tmp_path):
    gw, tok, store = env["gw"], env["tokens"]["carol"], env["store"]
    store.put("model/w", np.full(N, 0.5, np.float32), namespace="carol")
    path = tmp_path / "add_half.json"
    path.write_text(json.dumps(vadd_function()))
    out = CliRunner().invoke(
        cli, ["function", "put", "add_half", str(path), "--store", store.url, "--namespace", "carol"]
    )
    assert out.exit_code == 0 and "carol:add_half version 1" in out.output, out.output
    body = json.dumps({"inputs": [{"name": "x", "shape": [N], "datatype": "FP32", "data": list(range(N))}]})
    proc = subprocess.run(
        [
            "curl",
            "-sS",
            "-H",
            f"Authorization: Bearer {tok}",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
            f"http://{gw.url}/v2/models/add_half/infer",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    answer = json.loads(proc.stdout)
    assert answer["model_name"] == "add_half" and answer["outputs"][0]["shape"] == [N]
    np.testing.assert_allclose(answer["outputs"][0]["data"], np.arange(N) + 0.5)
    listing = CliRunner().invoke(cli, ["function", "ls", "--store", store.url, "--namespace", "carol", "--json"])
    assert json.loads(listing.output)["name"] == "add_half"
    got = CliRunner().invoke(cli, ["function", "get", "add_half", "--store", store.url, "--namespace", "carol"])
    assert json.loads(got.output)["inputs"][0]["datatype"] == "FP32"
    status, _, index = call(gw, "POST", "/v2/repository/index", b"{}", token=tok)
    assert status == 200 and {m["name"] for m in json.loads(index)} == {"add_half", "public:shared_vadd"}
    rm = CliRunner().invoke(cli, ["function", "rm", "add_half", "--store", store.url, "--namespace", "carol"])
    assert rm.exit_code == 0 and "version(s) 1" in rm.output


def test_several_tenants_at_once_each_get_their_own_results(env):
    gw, tokens, w, client = env["gw"], env["tokens"], env["weights"], env["client"]
    before = cluster_state(client)["tenants"]

    def loop(tenant, model, weights):
        c = triton(gw)
        for i in range(8):
            x = np.full(N, i, np.float32) + np.arange(N, dtype=np.float32) / N
            inp = tritonclient_http.InferInput("x", [N], "FP32")
            inp.set_data_from_numpy(x)
            y = c.infer(model, [inp], headers=bearer(tokens[tenant])).as_numpy("y")
            np.testing.assert_allclose(y, x + weights, rtol=1e-6)
        return tenant

    jobs = [("alice", "vadd", w["alice"]), ("bob", "vadd", w["bob"]), ("carol", "shared_vadd", w["public"])]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        assert sorted(f.result(timeout=300) for f in [pool.submit(loop, *j) for j in jobs]) == ["alice", "bob", "carol"]
    after = cluster_state(client)["tenants"]
    for tenant in ("alice", "bob", "carol"):  # each call ran as the token's tenant
        assert after[tenant]["completed"] - before.get(tenant, {}).get("completed", 0) == 8


def test_concurrent_calls_of_one_function_are_batched(env):
    """Many callers of one function at once: each gets its own right answer, in fewer Dask tasks than calls."""
    gw, tokens, w, client = env["gw"], env["tokens"], env["weights"], env["client"]
    before = cluster_state(client)["tenants"]["bob"]

    def one(i):
        x = np.full(N, i, np.float32)
        inp = tritonclient_http.InferInput("x", [N], "FP32")
        inp.set_data_from_numpy(x)
        np.testing.assert_allclose(
            triton(gw).infer("vadd", [inp], headers=bearer(tokens["bob"])).as_numpy("y"), x + w["bob"], rtol=1e-6
        )

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        for f in [pool.submit(one, i) for i in range(128)]:
            f.result(timeout=300)
    after = cluster_state(client)["tenants"]["bob"]
    calls, tasks = after["completed"] - before["completed"], after["tasks"] - before["tasks"]
    assert calls == after["submitted"] - before["submitted"] == 128
    assert tasks < calls  # at most 4 batches of a function in flight on 2 workers; the rest queued and batched


def infer_json(x, **extra):
    return {"inputs": [{"name": "x", "shape": [len(x)], "datatype": "FP32", "data": list(map(float, x))}], **extra}


def test_every_bad_call_gets_its_status_and_a_json_error(env):
    gw, tok = env["gw"], env["tokens"]
    good = infer_json(np.zeros(N))
    cases = [
        # (method, path, body, token, headers, status, in the message)
        ("POST", "/v2/models/vadd/infer", good, None, None, 401, "bearer token"),
        ("POST", "/v2/models/vadd/infer", good, "kaas_not-a-token", None, 401, "bearer token"),
        ("GET", "/v2/models/vadd", None, None, None, 401, "bearer token"),
        ("POST", "/v2/models/secret/infer", good, tok["alice"], None, 404, "not found"),  # bob's private one
        ("POST", "/v2/models/bob:secret/infer", good, tok["alice"], None, 404, "not found"),
        ("GET", "/v2/models/bob:vadd", None, tok["alice"], None, 404, "not found"),
        ("POST", "/v2/models/..%2Fbob%2Fsecret/infer", good, tok["alice"], None, 404, ""),
        ("POST", "/v2/models/vadd/versions/7/infer", good, tok["alice"], None, 404, "no version 7"),
        ("GET", "/v2/nothing", None, tok["alice"], None, 404, "Not Found"),
        ("POST", "/v2/models/vadd/infer", infer_json(np.zeros(N - 1)), tok["alice"], None, 400, "input 'x': shape"),
        (
            "POST",
            "/v2/models/vadd/infer",
            {"inputs": [{"name": "x", "shape": [N], "datatype": "INT32", "data": [0] * N}]},
            tok["alice"],
            None,
            400,
            "input 'x': datatype 'INT32'",
        ),
        (
            "POST",
            "/v2/models/vadd/infer",
            json.dumps(
                {
                    "inputs": [
                        {"name": "x", "shape": [N], "datatype": "FP32", "parameters": {"binary_data_size": 4 * N - 4}}
                    ]
                }
            ).encode()
            + b"\0" * (4 * N - 4),
            tok["alice"],
            "binary",
            400,
            "input 'x': 1020 bytes",
        ),
        (
            "POST",
            "/v2/models/vadd/infer",
            infer_json(np.zeros(N), parameters={"tenant": "bob"}),
            tok["alice"],
            None,
            400,
            "bearer token's",
        ),
        ("POST", "/v2/models/vadd/infer", b"x" * (2 << 20), tok["alice"], None, 413, "limit"),
        ("POST", "/v2/models/broken/infer", {"inputs": []}, tok["alice"], None, 500, "KernelError"),
    ]
    for method, path, body, token, headers, status, message in cases:
        if headers == "binary":
            headers = {"Inference-Header-Content-Length": str(body.index(b"}]}") + 3)}
        got, h, raw = call(gw, method, path, body, token=token, headers=headers)
        assert got == status, (path, token, got, raw[:300])
        error = json.loads(raw)["error"]
        assert message in error, (path, error)
        if status == 401:
            assert h.get("www-authenticate", h.get("WWW-Authenticate", "")).startswith("Bearer")
    # the gateway and the cluster go on serving
    status, _, raw = call(gw, "POST", "/v2/models/vadd/infer", good, token=tok["alice"])
    assert status == 200 and json.loads(raw)["outputs"][0]["data"] == env["weights"]["alice"].tolist()


def test_rate_limits_and_admission_are_429_with_retry_after(env):
    gw, tok = env["gw"], env["tokens"]
    good = infer_json(np.zeros(N))
    assert call(gw, "POST", "/v2/models/shared_vadd/infer", good, token=tok["dave"])[0] == 200
    status, headers, raw = call(gw, "POST", "/v2/models/shared_vadd/infer", good, token=tok["dave"])
    assert status == 429 and "rate limit" in json.loads(raw)["error"]
    assert int({k.lower(): v for k, v in headers.items()}["retry-after"]) >= 90
    # the shape has run (earlier calls), so the scheduler predicts it: a microsecond deadline is refused
    assert call(gw, "POST", "/v2/models/vadd/infer", good, token=tok["alice"])[0] == 200
    status, headers, raw = call(
        gw, "POST", "/v2/models/vadd/infer", infer_json(np.zeros(N), parameters={"timeout": 1}), token=tok["alice"]
    )
    assert status == 429 and "admission" in json.loads(raw)["error"]
    assert int({k.lower(): v for k, v in headers.items()}["retry-after"]) >= 1


def test_metrics_count_calls_by_tenant_and_status(env):
    assert call(env["gw"], "GET", "/metrics")[0] == 401  # tenants and their functions: the operator's only
    status, _, raw = call(env["gw"], "GET", "/metrics", token=METRICS_TOKEN)
    text = raw.decode()
    assert status == 200
    assert 'dask_kaas_gateway_requests_total{model="alice:vadd",status="200",tenant="alice"}' in text
    assert 'dask_kaas_gateway_errors_total{status="401",tenant="-"}' in text
    assert 'dask_kaas_gateway_errors_total{status="404",tenant="alice"}' in text
    assert "dask_kaas_gateway_request_seconds_bucket" in text and "secret" not in text


def test_a_killed_gateway_restarts_with_every_function_and_buffer(env):
    gw, tok, store, procs = env["gw"], env["tokens"]["bob"], env["store"], env["procs"]
    version = store.version("model/w", namespace="bob").version
    procs.kill("gateway", signal.SIGKILL)
    assert call(gw, "GET", "/v2/health/live")[0] is None
    gw.start()
    status, _, raw = call(gw, "POST", "/v2/models/vadd/infer", infer_json(np.ones(N)), token=tok)
    assert status == 200
    np.testing.assert_allclose(json.loads(raw)["outputs"][0]["data"], 1 + env["weights"]["bob"], rtol=1e-6)
    assert store.version("model/w", namespace="bob").version == version
    assert env["repo"].versions("secret", namespace="bob") == [1]


def test_the_gateway_command_needs_a_scheduler(tmp_path):
    out = CliRunner().invoke(cli, ["gateway", "--tokens", str(tmp_path / "t.yaml")], env={"DASK_SCHEDULER_ADDRESS": ""})
    assert out.exit_code == 2 and "scheduler address" in out.output


def readme_section() -> str:
    text = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    return text.split("## Serving functions over HTTP", 1)[1].split("\n## ", 1)[0]


def test_the_readme_walkthrough_runs_as_written(tmp_path):
    """The README's function file, commands, curl call and tritonclient snippets (HTTP and gRPC), run as
    written (ports swapped for free ones, home and data directories in tmp)."""
    section = readme_section()
    (tmp_path / "vadd.json").write_text(section.split("```json\n", 1)[1].split("```", 1)[0])
    script = section.split("```bash\n", 1)[1].split("```", 1)[0]
    snippets = [block.split("```", 1)[0] for block in section.split("```python\n")[1:]]
    assert len(snippets) == 2 and "tritonclient.grpc" in snippets[1]
    port, http_port, grpc_port = free_port(), free_port(), free_port()

    def ports(text):
        return text.replace("8786", str(port)).replace("8000", str(http_port)).replace("8001", str(grpc_port))

    script = ports(script)
    script = script.replace(f"tcp://127.0.0.1:{port} &", f"tcp://127.0.0.1:{port} --port {http_port} &")
    home = tmp_path / "home"
    home.mkdir()
    # the default store is the session's (conftest's XDG_DATA_HOME), for the workers and the commands alike
    env = {**os.environ, "HOME": str(home), "PATH": BIN + os.pathsep + os.environ.get("PATH", "")}
    procs = Processes(tmp_path)
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
        procs.start(
            "worker",
            os.path.join(BIN, "dask-kaas"),
            "worker",
            f"tcp://127.0.0.1:{port}",
            "--device",
            "host",
            "--no-dashboard",
        )
        # files, not pipes: the gateway the script starts in the background keeps its output open
        with open(tmp_path / "out", "w") as out_file, open(tmp_path / "err", "w") as err_file:
            run = subprocess.Popen(
                ["bash", "-ec", script + "\necho TOKEN=$TOKEN\n"],
                cwd=tmp_path,
                env=env,
                stdout=out_file,
                stderr=err_file,
                start_new_session=True,
            )
        try:
            returncode = run.wait(timeout=240)
            out, err = (tmp_path / "out").read_text(), (tmp_path / "err").read_text()
            assert returncode == 0, err[-3000:]
            assert '"data":[11.0,12.0,13.0,14.0]' in out, out[-2000:]
            token = out.rsplit("TOKEN=", 1)[1].strip()
            for snippet in snippets:
                printed = subprocess.run(
                    [sys.executable, "-c", ports(snippet)],
                    env={**os.environ, "TOKEN": token},  # as the script exported it
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                assert printed.stdout.strip() == "[10. 11. 12. 13.]", printed.stderr[-2000:]
        finally:
            os.killpg(run.pid, signal.SIGTERM)
    finally:
        procs.stop_all()
