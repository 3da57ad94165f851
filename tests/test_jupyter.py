"""Notebook views: Request._repr_html_, Request.visualize (Graphviz or the built-in SVG), ClusterState's HTML,
and Dask's progress bar on KaaS futures."""

import pickle
import xml.dom.minidom

import numpy as np
import pytest
from distributed import Client, progress, wait
from helpers import matvec_request

import dask_kaas
from dask_kaas import BufferSpec, KernelSpec, Literal, LocalKaasCluster, Request, RequestError, cluster_state, jupyter
from dask_kaas.demo import jacobi_request, mlp_request

N = 64


@pytest.fixture
def mlp():
    return mlp_request("demo/mlp", batch=32, d_in=64, hidden=256, classes=10, tenant="alice")


def test_repr_html_lists_kernels_buffers_and_totals(mlp):
    page = mlp._repr_html_()
    for kernel in ("sgemm", "bias_relu", "softmax_rows"):
        assert f"<b>{kernel}</b>" in page
    for name in mlp.buffers:
        assert f"<b>{name}</b>" in page
    temp_bytes = sum(mlp.buffers[n].size for n in mlp.temporaries)
    assert mlp.const_bytes == (64 * 256 + 256 + 256 * 10) * 4 and temp_bytes == (32 * 256 + 32 * 10) * 4
    assert f"({mlp.const_bytes} B)" in page and f"({temp_bytes} B)" in page
    assert "const" in page and "ephemeral" in page and "temporary" in page
    assert "demo/mlp/w1" in page  # the store key
    assert "i=32" in page  # literals as type=value
    assert "16x2 / 16x16" in page  # grid / block
    assert "alice" in page and "n_iter" in page and "deadline" in page
    assert "0:sgemm t (temporary)" in page and "3:softmax_rows o (output)" in page


def test_repr_html_escapes_everything():
    evil = "<script>alert(1)</script>"
    x = BufferSpec("x&<b>", 4 * N, dtype="float32", ephemeral=True)
    y = BufferSpec("y", 4 * N, key="k/<i>", dtype="float32")
    valid = Request(
        [KernelSpec("builtin", "vadd", 1, 64, literals=[Literal("i", N)], arguments=[(x, "i"), (x, "i"), (y, "o")])],
        deadline=2.5,
    )
    with pytest.raises(RequestError, match="tenant"):  # no constructor accepts such a tenant ...
        Request(valid.kernels, tenant=evil)
    from dask_kaas.request.model import _set_request_fields

    r = object.__new__(Request)  # ... but a forged object can carry one: still escaped
    _set_request_fields(r, valid.kernels, 1, evil, 2.5)
    page = r._repr_html_()
    assert evil not in page and "&lt;script&gt;" in page
    assert "x&<b>" not in page and "x&amp;&lt;b&gt;" in page and "k/&lt;i&gt;" in page
    assert "2.5 s" in page
    svg = r.visualize().data
    assert evil not in svg and "x&amp;&lt;b&gt;" in svg
    xml.dom.minidom.parseString(svg)


@pytest.mark.parametrize(
    "make",
    [
        lambda: mlp_request("demo/mlp", batch=8, d_in=16, hidden=32, classes=4, tenant="t"),
        lambda: jacobi_request("A", 32, 3, "t"),
        lambda: matvec_request("A"),
    ],
)
def test_visualize_svg_fallback_names_every_kernel_and_buffer(make, monkeypatch, tmp_path):
    monkeypatch.setattr(jupyter, "graphviz_available", lambda: False)
    r = make()
    out = r.visualize()
    assert isinstance(out, jupyter.SVG) and out._repr_svg_() == out.data
    xml.dom.minidom.parseString(out.data)  # well-formed
    for k in r.kernel_names:
        assert k in out.data
    for name in r.buffers:
        assert f">{name}" in out.data
    # edges: one per read and one per write, labelled with the io code
    reads = sum(io in ("i", "io") for k in r.kernels for _, io in k.arguments)
    assert out.data.count("<path d=") >= reads
    target = tmp_path / "graph.svg"
    assert r.visualize(filename=target).data == out.data
    assert target.read_text() == out.data
    with pytest.raises(ValueError, match="Graphviz"):
        r.visualize(filename=tmp_path / "graph.png")


def test_edges_follow_reads_and_writes(mlp):
    edges = jupyter._edges(mlp)
    assert ("b:x", "k0", "i") in edges and ("b:w1", "k0", "i") in edges
    assert ("k0", "b:h", "t") in edges and ("b:h", "k0", "t") not in edges  # a temporary's first use writes it
    assert ("b:h", "k1", "t") in edges and ("k1", "b:h", "t") in edges  # in place
    assert ("k3", "b:y", "o") in edges and ("b:y", "k3", "o") not in edges


def test_visualize_uses_graphviz_when_available(mlp, monkeypatch, tmp_path):
    graphviz = pytest.importorskip("graphviz")
    monkeypatch.setattr(jupyter, "graphviz_available", lambda: True)
    g = mlp.visualize()
    assert isinstance(g, graphviz.Digraph)
    for name in [*mlp.kernel_names, *mlp.buffers]:
        assert name in g.source
    if jupyter._dot_works():
        target = tmp_path / "g.svg"
        mlp.visualize(filename=target)
        assert "<svg" in target.read_text()


STATE = {
    "policy": "affinity",
    "workers": {
        "tcp://10.0.0.1:4001": {
            "cache": [{"namespace": "alice", "key": "w", "version": 2, "uid": "u", "bytes": 4096}],
            "capacity": 2**30,
            "used": 4096,
            "pinned": 0,
            "free": 2**30 - 4096,
            "queue": 3,
            "queued_seconds": 0.25,
            "counters": {},
        },
        "tcp://10.0.0.2:4001": {
            "cache": [],
            "capacity": 2**30,
            "used": 0,
            "pinned": 0,
            "free": 2**30,
            "queue": 0,
            "queued_seconds": 0.0,
            "counters": {},
        },
    },
    "tenants": {
        "alice": {
            "submitted": 5,
            "completed": 4,
            "rejected": 1,
            "failed": 0,
            "gpu_seconds": 0.5,
            "latency_p50": 0.012,
            "latency_p99": 0.034,
            "latency_mean": 0.02,
        },
        "<bob>": {
            "submitted": 0,
            "completed": 0,
            "rejected": 0,
            "failed": 0,
            "gpu_seconds": 0.0,
            "latency_p50": None,
            "latency_p99": None,
            "latency_mean": None,
        },
    },
    "recent": [],
}


def test_cluster_state_is_the_dict_with_an_html_view():
    state = jupyter.ClusterState(STATE)
    assert isinstance(state, dict) and state == STATE and dict(state) == STATE
    assert state["workers"]["tcp://10.0.0.1:4001"]["queue"] == 3 and list(state) == list(STATE)
    assert pickle.loads(pickle.dumps(state)) == STATE
    page = state._repr_html_()
    for addr in STATE["workers"]:
        assert addr in page
    assert "alice" in page and "&lt;bob&gt;" in page and "<bob>" not in page
    assert "12.0 ms" in page and "34.0 ms" in page  # p50 / p99
    assert "alice:w v2" in page and "1.00 GiB" in page


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    store = f"file://{tmp_path_factory.mktemp('jupyter-store')}"
    with (
        LocalKaasCluster(
            n_workers=2, device="host", device_memory="64MiB", store=store, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        a = np.random.default_rng(0).standard_normal((N, N)).astype(np.float32)
        cluster.store.put("A", a, namespace="nb1")
        cluster.store.put("A", a, namespace="nb2")
        client.kaas_a = a
        yield client


def test_progress_on_kaas_futures(client, capsys):
    xs = [np.random.default_rng(i).standard_normal(N).astype(np.float32) for i in range(12)]
    futures = [
        client.submit(matvec_request("A", tenant=("nb1", "nb2")[i % 2]), x=x, pure=False) for i, x in enumerate(xs)
    ]
    progress(futures, notebook=False)  # blocks until the scheduler has them all done
    wait(futures)  # the client learns of each completion a moment later
    assert all(f.status == "finished" for f in futures)
    assert "100% Completed" in capsys.readouterr().out
    for x, result in zip(xs, client.gather(futures)):
        np.testing.assert_allclose(result["y"], x @ client.kaas_a, rtol=1e-4, atol=1e-5)


def test_cluster_state_of_a_live_cluster(client):
    client.gather(
        [client.submit(matvec_request("A", tenant=t), x=np.ones(N, np.float32), pure=False) for t in ("nb1", "nb2")]
    )
    state = cluster_state(client)
    assert isinstance(state, jupyter.ClusterState) and isinstance(state, dict)
    assert state["policy"] and set(state["workers"]) == set(client.scheduler_info()["workers"])
    page = state._repr_html_()
    for addr in state["workers"]:
        assert addr in page
    for tenant in state["tenants"]:
        assert f"<b>{tenant}</b>" in page
    assert {"nb1", "nb2"} <= set(state["tenants"])
    assert dask_kaas.cluster_state is cluster_state
