"""The gateway's limits: what reading a body may cost (bounded by what the function declares), slow
and vanishing callers, early answers that reach their callers, and /metrics for the operator only.
Pure where the logic is pure; else against a `dask-kaas gateway` process over a LocalKaasCluster."""

import concurrent.futures
import gzip
import json
import os
import socket
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest
from procs import Processes, free_port
from test_gateway import METRICS_TOKEN, Gateway, bearer, call, infer_json, triton, tritonclient_http, vadd_function

from dask_kaas import BufferStore, LocalKaasCluster
from dask_kaas.functions import FunctionRepository, function_from_doc
from dask_kaas.gateway.oip import (
    BodyBudget,
    JsonStructure,
    OipError,
    body_budget,
    check_structure,
    decode_body,
    read_infer,
)
from dask_kaas.gateway.tokens import add_token

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # the benchmarks package lives at the repository root, not in the installed package
    sys.path.insert(0, ROOT)

from benchmarks.gateway_attack import Attack, RssSampler, bombs, latency, victim_calls

requests = pytest.importorskip("requests")  # a standard client, beside tritonclient

N = 256
WIDE = 1 << 18  # elements the attacker's own function declares: a JSON budget of 12 MiB
READ_TIMEOUT = 2.0
MiB = 1 << 20


def fn_of(n, name="vadd"):
    return function_from_doc(vadd_function(n), name=name, namespace="alice")


def budget_of(fn, max_body=64 * MiB, max_json=16 * MiB) -> BodyBudget:
    return body_budget(fn, max_body, max_json)


# ------------------------------------------------------------------ pure: the budget and the scan
def test_a_body_budget_is_what_the_declared_inputs_need():
    small, wide = budget_of(fn_of(N)), budget_of(fn_of(WIDE))
    assert small.binary == 4 * N and small.total == small.json + small.binary
    assert small.json < 128 * 1024 < wide.json == 64 * 1024 + 48 * WIDE
    assert budget_of(fn_of(1 << 20)).json == 16 * MiB  # kaas.gateway.max-json
    assert budget_of(fn_of(1 << 20), max_body=MiB).total == MiB  # within kaas.gateway.max-body
    nested = function_from_doc(
        {**vadd_function(N), "inputs": [{"name": "x", "datatype": "FP32", "shape": [4, 8, 8]}]},
        name="n",
        namespace="alice",
    )
    assert budget_of(nested).depth == budget_of(fn_of(N)).depth + 2
    assert budget_of(nested).arrays - budget_of(fn_of(N)).arrays == (1 + 4 + 32) - 1


def legit_bodies(n):
    x = np.arange(n, dtype=np.float32) / 7
    doc = {
        "id": 'a "[[[" id ]]]\\',
        "parameters": {"note": '}}}]]]{{{[[[ \\" ]'},
        "inputs": [{"name": "x", "shape": [n], "datatype": "FP32", "data": x.tolist()}],
        "outputs": [{"name": "y", "parameters": {"binary_data": False}}],
    }
    flat = json.dumps(doc).encode()
    pretty = json.dumps(doc, indent=4).encode()
    header = json.dumps(
        {"inputs": [{"name": "x", "shape": [n], "datatype": "FP32", "parameters": {"binary_data_size": 4 * n}}]}
    ).encode()
    return x, [
        (flat, None, None),
        (pretty, None, None),
        (gzip.compress(flat), "gzip", None),
        (header + x.tobytes(), None, str(len(header))),
        (gzip.compress(header + x.tobytes()), "gzip", str(len(header))),
    ]


def test_what_a_caller_may_send_is_read_within_the_budget():
    for n in (N, WIDE):
        fn = fn_of(n)
        x, bodies = legit_bodies(n)
        for body, encoding, header_length in bodies:
            call_ = read_infer(body, encoding, header_length, fn, budget_of(fn))
            np.testing.assert_array_equal(call_.inputs["x"], x)


@pytest.mark.parametrize("bomb", range(3))
def test_bombs_are_refused_before_parsing_and_cheaply(bomb):
    """~8 KB of gzip inflating to 8 MiB of nested empty arrays: refused at the first piece inflated, in
    milliseconds and a few MiB, whether the function's budget is small (413) or large (400)."""
    body = bombs()[bomb]
    assert len(body) < 20_000
    for fn, status in ((fn_of(N), 413), (fn_of(WIDE), 400)):
        tracemalloc.start()
        started = time.perf_counter()
        with pytest.raises(OipError) as info:
            read_infer(body, "gzip", None, fn, budget_of(fn))
        seconds = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert info.value.status == status, info.value.message
        assert seconds < 1.0 and peak < 16 * MiB, (seconds, peak)


def test_the_scan_is_not_fooled_by_brackets_and_escapes_in_strings():
    budget = budget_of(fn_of(N))
    hidden = b'{"id": "' + b"]" * 5000 + b'", "inputs": ' + b"[" * 50 + b"]" * 50 + b"}"  # depth hidden by a string
    with pytest.raises(OipError, match="nests deeper"):
        check_structure(hidden, budget, "the body")
    escaped = b'{"id": "\\\\\\"' + b"]" * 5000 + b'", "inputs": ' + b"[" * 50 + b"]" * 50 + b"}"
    with pytest.raises(OipError, match="nests deeper"):
        check_structure(escaped, budget, "the body")
    legit = json.dumps({"id": '\\"[[[[[[[[[[[[[[[[[[[[\\', "p": {"q": "\\\\]]]]]]]]]]]]]]]]]]]"}}).encode()
    check_structure(legit, budget, "the body")
    for cut in range(1, len(legit)):  # fed in two pieces, wherever the cut falls (inside escapes too)
        structure = JsonStructure(budget, "the body")
        structure.feed(legit[:cut])
        structure.feed(legit[cut:])
        assert structure.depth == 0 and structure.deepest == 2 and structure.inside == 0, cut


def test_decompression_stops_at_the_first_piece_a_check_refuses():
    pieces = []

    def feed(piece):
        pieces.append(len(piece))
        if sum(pieces) > 2 * MiB:
            raise OipError(400, "enough")

    with pytest.raises(OipError, match="enough"):
        decode_body(gzip.compress(b"0" * (64 * MiB)), "gzip", 128 * MiB, feed)
    assert sum(pieces) <= 4 * MiB
    with pytest.raises(OipError) as info:
        decode_body(b"x" * 101, None, 100)
    assert info.value.status == 413


# ------------------------------------------------------------------ a gateway process
@pytest.fixture(scope="module")
def gw_env(tmp_path_factory):
    """A LocalKaasCluster and a gateway at the default body limits (64 MiB, JSON 16 MiB), a 2 s read
    timeout and a metrics token; alice owns `wide` (the attacker's), carol `vadd`, bob `secret`."""
    root = tmp_path_factory.mktemp("limits")
    store = BufferStore(str(root / "store"))
    rng = np.random.default_rng(0)
    weights = {ns: rng.standard_normal(N).astype(np.float32) for ns in ("alice", "bob", "carol")}
    repo = FunctionRepository(store)
    for ns, w in weights.items():
        store.put("model/w", w, namespace=ns)
        repo.put("vadd", vadd_function(N), namespace=ns)
    store.put("model/wide", np.zeros(WIDE, np.float32), namespace="alice")
    repo.put("wide", vadd_function(WIDE, key="model/wide"), namespace="alice")
    repo.put("secret", vadd_function(N), namespace="bob")
    slow = vadd_function(N)
    slow["request"]["n_iter"] = 100_000  # about a second on the host device
    repo.put("slow", slow, namespace="alice")
    tokens_path = str(root / "tokens.yaml")
    tokens = {t: add_token(tokens_path, t) for t in ("alice", "bob", "carol")}
    procs = Processes(root)
    with LocalKaasCluster(n_workers=2, device="host", store=store, dashboard_address=":0") as cluster:
        gw = Gateway(procs, cluster.scheduler_address, store, tokens_path, free_port())
        gw.args[gw.args.index("--max-body") + 1] = "64MiB"
        gw.args += ["--read-timeout", str(READ_TIMEOUT)]  # the flag, over kaas.gateway.read-timeout (30 s)
        gw.start()
        try:
            yield {
                "gw": gw,
                "tokens": tokens,
                "weights": weights,
                "procs": procs,
                "root": root,
                "scheduler": cluster.scheduler_address,
                "store": store,
                "tokens_path": tokens_path,
            }
        finally:
            procs.stop_all()


def metric(gw, line: str) -> bool:
    return line in call(gw, "GET", "/metrics", token=METRICS_TOKEN)[2].decode()


@pytest.mark.slow
def test_gzip_bombs_are_refused_quickly_and_other_tenants_go_on(gw_env, record_property):
    """Three senders of gzip bombs (~8 KB inflating to 8 MiB of nested empty arrays) at the attacker's
    own function with the largest JSON budget: each refused with 400 within seconds, the gateway
    grows by less than 100 MiB, and another tenant's calls all succeed meanwhile (their p99 under
    attack over idle is recorded, not asserted: this machine's load is not the gateway's)."""
    gw, tok, w = gw_env["gw"], gw_env["tokens"], gw_env["weights"]
    client = triton(gw)
    x = np.arange(N, dtype=np.float32)

    def victim():
        inp = tritonclient_http.InferInput("x", [N], "FP32")
        inp.set_data_from_numpy(x)
        y = client.infer("vadd", [inp], headers=bearer(tok["carol"])).as_numpy("y")
        np.testing.assert_allclose(y, x + w["carol"], rtol=1e-6)

    victim_calls(victim, calls=10)
    idle = latency(victim_calls(victim, calls=60))
    with RssSampler(gw.procs.procs["gateway"].pid) as rss, Attack(gw.url, "wide", tok["alice"], 3) as attack:
        under = latency(victim_calls(victim, seconds=5.0))
    summary = attack.summary()
    ratio = under["p99_ms"] / idle["p99_ms"]
    record_property("victim_p99_ratio", ratio)
    record_property("gateway_rss_growth_mib", rss.mib()["growth"])
    print(
        f"victim p99 idle {idle['p99_ms']:.1f} ms, under attack {under['p99_ms']:.1f} ms ({ratio:.2f}x); "
        f"{summary['bombs']} bombs {summary['statuses']}, answered in max {summary['answer_ms']['max']:.0f} ms; "
        f"gateway RSS +{rss.mib()['growth']:.1f} MiB"
    )
    assert summary["bombs"] >= 3 and set(summary["statuses"]) == {"400"}, summary
    assert summary["answer_ms"]["max"] < 10_000, summary
    assert rss.mib()["growth"] < 100, rss.mib()
    # at a function of small inputs the same bodies stop at its budget: 413
    for body in bombs():
        status, _, raw = call(
            gw, "POST", "/v2/models/vadd/infer", body, token=tok["alice"], headers={"Content-Encoding": "gzip"}
        )
        assert status == 413 and "limit" in json.loads(raw)["error"]


@pytest.mark.slow
def test_a_body_over_its_limit_reaches_the_caller_as_413_not_as_a_reset(gw_env, tmp_path):
    gw, tok = gw_env["gw"], gw_env["tokens"]
    url = f"http://{gw.url}/v2/models/vadd/infer"
    big = b"x" * (8 * MiB)  # over vadd's budget, within kaas.gateway.max-body: read and dropped, then answered

    def chunked():
        for i in range(0, len(big), MiB):
            yield big[i : i + MiB]

    with requests.Session() as session:
        for i in range(10):
            r = session.post(url, data=big if i % 2 else chunked(), headers=bearer(tok["carol"]), timeout=120)
            assert r.status_code == 413 and "limit" in r.json()["error"], r.text[:300]
        # the connection goes on serving: the body was read to its end
        r = session.post(url, json=infer_json(np.zeros(N)), headers=bearer(tok["carol"]), timeout=120)
        assert r.status_code == 200
    # unauthenticated, over the limit: still the answer, not a reset
    r = requests.post(url, data=big, timeout=120)
    assert r.status_code == 401
    # curl asks "Expect: 100-continue" for a large body: the answer comes before it sends any
    (tmp_path / "big").write_bytes(big)
    started = time.monotonic()
    curl = subprocess.run(
        [
            "curl",
            "-sS",
            "-w",
            "\n%{http_code}",
            "-H",
            f"Authorization: Bearer {tok['carol']}",
            "--data-binary",
            f"@{tmp_path / 'big'}",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert curl.stdout.endswith("\n413") and "limit" in curl.stdout, curl.stdout[-300:] + curl.stderr[-300:]
    assert time.monotonic() - started < 30
    client = triton(gw)
    inp = tritonclient_http.InferInput("x", [4 * MiB], "FP32")  # 16 MiB of binary data: not vadd's shape
    inp.set_data_from_numpy(np.zeros(4 * MiB, np.float32))
    with pytest.raises(tritonclient_http.InferenceServerException, match="limit"):
        client.infer("vadd", [inp], headers=bearer(tok["carol"]))


def raw_request(gw, path, token, length, first: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=60)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n".encode()
        + first
    )
    return sock


def read_until_closed(sock) -> bytes:
    out = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return out
        out += chunk


@pytest.mark.slow
def test_a_slow_body_is_answered_408_and_its_connection_closed(gw_env):
    gw, tok = gw_env["gw"], gw_env["tokens"]
    started = time.monotonic()
    sock = raw_request(gw, "/v2/models/vadd/infer", tok["carol"], 1000, b'{"inputs": [')
    answer = read_until_closed(sock)  # the gateway closes it: a slow caller holds nothing
    assert answer.startswith(b"HTTP/1.1 408") and b"read timeout" in answer, answer[:300]
    assert READ_TIMEOUT <= time.monotonic() - started < READ_TIMEOUT + 10
    # a byte now and then does not keep a body alive: the timeout is for the whole body
    started = time.monotonic()
    sock = raw_request(gw, "/v2/models/vadd/infer", tok["carol"], 1000, b"{")
    sock.settimeout(0.5)
    answer = b""
    while not answer and time.monotonic() - started < READ_TIMEOUT + 10:
        try:
            answer = sock.recv(65536)
        except TimeoutError:
            sock.sendall(b" ")
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert READ_TIMEOUT <= time.monotonic() - started < READ_TIMEOUT + 10
    sock.close()
    assert metric(gw, 'dask_kaas_gateway_requests_total{model="carol:vadd",status="408",tenant="carol"}')


@pytest.mark.slow
def test_headers_past_their_limit_are_refused_not_held(gw_env):
    """uvicorn has no timeout for headers; what one connection's headers may hold is bounded
    (kaas.gateway.max-header, 64 KiB): past it the gateway answers 400 and closes."""
    gw, tok = gw_env["gw"], gw_env["tokens"]
    rss = RssSampler(gw.procs.procs["gateway"].pid)
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=30)
    sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: ")
    try:
        for _ in range(64):
            sock.sendall(b"a" * MiB)
    except OSError:
        pass  # closed on us: the point
    try:
        answer = read_until_closed(sock)
    except OSError:
        answer = b""
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400"), answer[:300]
    assert rss.process.memory_info().rss - rss.before < 32 * MiB
    assert call(gw, "POST", "/v2/models/vadd/infer", infer_json(np.zeros(N)), token=tok["carol"])[0] == 200


@pytest.mark.slow
def test_a_caller_that_hangs_up_mid_body_is_499_in_one_log_line(gw_env):
    gw, tok, procs = gw_env["gw"], gw_env["tokens"], gw_env["procs"]
    for _ in range(3):
        sock = raw_request(gw, "/v2/models/vadd/infer", tok["bob"], 50_000, b'{"inputs": [' + b" " * 1000)
        time.sleep(0.2)
        sock.close()
    deadline = time.monotonic() + 30
    line = 'dask_kaas_gateway_requests_total{model="bob:vadd",status="499",tenant="bob"} 3.0'
    while not metric(gw, line) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert metric(gw, line)
    assert not metric(gw, 'dask_kaas_gateway_requests_total{model="bob:vadd",status="500",tenant="bob"}')
    log = procs.log("gateway")
    assert log.count("hung up after") == 3 and "Traceback" not in log and "never retrieved" not in log, log[-3000:]


@pytest.mark.slow
def test_metrics_need_the_operator_token_and_leak_nothing_without_it(gw_env, tmp_path):
    gw, tok = gw_env["gw"], gw_env["tokens"]
    assert call(gw, "POST", "/v2/models/secret/infer", infer_json(np.zeros(N)), token=tok["bob"])[0] == 200
    for token in (None, tok["bob"], tok["alice"], METRICS_TOKEN + "x"):
        status, headers, raw = call(gw, "GET", "/metrics", token=token)
        assert status == 401 and b"secret" not in raw and b"bob" not in raw, raw[:300]
        assert headers.get("www-authenticate", headers.get("WWW-Authenticate", "")).startswith("Bearer")
    status, _, raw = call(gw, "GET", "/metrics", token=METRICS_TOKEN)
    assert status == 200 and 'model="bob:secret"' in raw.decode()
    # no metrics token set: /metrics is off for everyone, whatever they send
    other = Gateway(Processes(tmp_path), gw_env["scheduler"], gw_env["store"], gw_env["tokens_path"], free_port())
    other.env = {}
    other.start()
    try:
        assert call(other, "POST", "/v2/models/secret/infer", infer_json(np.zeros(N)), token=tok["bob"])[0] == 200
        for token in (None, tok["bob"], METRICS_TOKEN):
            status, _, raw = call(other, "GET", "/metrics", token=token)
            assert status == 403 and b"secret" not in raw and b"bob" not in raw, raw[:300]
    finally:
        other.procs.stop_all()


@pytest.mark.slow
def test_calls_past_the_timeout_are_504_and_leave_no_task_exception(gw_env, tmp_path):
    gw, tok = gw_env["gw"], gw_env["tokens"]
    fast = Gateway(Processes(tmp_path), gw_env["scheduler"], gw_env["store"], gw_env["tokens_path"], free_port())
    fast.args += ["--timeout", "0.3"]
    fast.start()
    try:

        def one(i):
            return call(fast, "POST", "/v2/models/slow/infer", infer_json(np.zeros(N)), token=tok["alice"])[0]

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            assert set(pool.map(one, range(24))) == {504}
        time.sleep(3)  # the batches left running finish (their outcomes reach no one)
        log = fast.procs.log("gateway")
        assert "never retrieved" not in log and "Traceback" not in log, log[-3000:]
    finally:
        fast.procs.stop_all()
    assert call(gw, "GET", "/v2/health/ready")[0] == 200
