"""Worker reports: deltas that keep the scheduler's picture exact, riding in task-finished."""

import numpy as np
import pytest
from distributed import Client

pytest.importorskip("hypothesis")  # a test-only dependency: without it the module skips, never errors
from helpers import matvec_request
from hypothesis import given, settings
from hypothesis import strategies as st

from dask_kaas.errors import KaasError
from dask_kaas.report import CachePicture, ReportBuilder

const = st.tuples(
    st.sampled_from(["a", "b"]),
    st.sampled_from(["w1", "w2", "w3", "w4"]),
    st.sampled_from(["u1", "u2"]),
    st.integers(1, 3),
    st.integers(1, 100),
)
states = st.lists(
    st.tuples(
        st.lists(const, max_size=5),
        st.dictionaries(st.sampled_from(["hits", "misses"]), st.integers(0, 50)),
        st.booleans(),
    ),
    min_size=1,
    max_size=40,
)


def canonical(consts):
    return {(ns, key): (uid, version, nbytes) for ns, key, uid, version, nbytes in consts}


@settings(max_examples=300, deadline=None)
@given(states=states, full_every=st.integers(2, 9))
def test_the_picture_follows_the_worker(states, full_every):
    builder, picture = ReportBuilder(full_every=full_every), CachePicture()
    counters = {}
    for consts, increments, delivered in states:
        for k, v in increments.items():
            counters[k] = counters.get(k, 0) + v
        report = builder.build({"ok": True}, consts=consts, counters=counters, load_seconds=0.0)
        if not (delivered or report["seq"] == 1):
            continue
        picture.apply(report)
        if picture.exact:  # exact means: what the worker had when it sent the report
            assert picture.resident == canonical(consts)
            assert {k: v for k, v in picture.counters.items() if v} == {k: v for k, v in counters.items() if v}
    # a full report always makes the picture exact again
    report = builder.build({}, consts=consts, counters=counters, load_seconds=1.5)
    while "consts" not in report:
        picture.apply(report)
        report = builder.build({}, consts=consts, counters=counters, load_seconds=1.5)
    picture.apply(report)
    assert picture.exact and picture.resident == canonical(consts) and picture.load_seconds == 1.5


def test_a_cleared_cache_is_reported_whole():
    """Caches cleared on a policy switch: the scheduler forgets its pictures and each worker's next
    report is whole, so a const loaded again after the clear is seen (a delta would say nothing
    changed since the report before the clear, and the picture would stay empty)."""
    from dask_kaas.device import HostDevice
    from dask_kaas.runtime import Runtime
    from dask_kaas.scheduling.cluster import Cluster

    builder, cluster = ReportBuilder(), Cluster()
    cluster.add("w1")
    w = [("t", "w", "u1", 1, 64)]
    cluster.apply_report("w1", builder.build({}, consts=w, counters={}, load_seconds=0.0))
    cluster.apply_report("w1", builder.build({}, consts=w, counters={}, load_seconds=0.0))
    cluster.forget_caches()
    assert cluster.holding([(("t", "w"), 64)]) == set()
    builder.reset()
    report = builder.build({}, consts=w, counters={}, load_seconds=0.0)
    assert "consts" in report
    cluster.apply_report("w1", report)
    assert cluster.views["w1"].picture.resident == canonical(w)
    assert cluster.holding([(("t", "w"), 64)]) == {"w1"}

    runtime = Runtime(HostDevice(1 << 20), "memory://cleared-cache")
    runtime._reports.build({}, consts=[], counters={}, load_seconds=0.0)
    runtime.clear_cache()
    assert "consts" in runtime._reports.build({}, consts=[], counters={}, load_seconds=0.0)


def test_deltas_are_small():
    builder = ReportBuilder()
    consts = [("t", f"w{i}", "u", 1, 2**20) for i in range(100)]
    full = builder.build({}, consts=consts, counters={"hits": 1}, load_seconds=0.0)
    delta = builder.build({}, consts=consts, counters={"hits": 2}, load_seconds=0.0)
    assert len(full["consts"]) == 100
    assert delta["added"] == [] and delta["removed"] == [] and delta["counters_delta"] == {"hits": 1}


def _kaas_metadata(dask_scheduler, keys):
    return [dask_scheduler.tasks[k].metadata.get("kaas") for k in keys]


def test_reports_ride_in_task_finished(cluster):
    with Client(cluster) as client:
        cluster.store.put("A", np.eye(64, dtype=np.float32), namespace="rep")
        futures = [
            client.submit(matvec_request("A", tenant="rep"), x=np.ones(64, np.float32), pure=False) for _ in range(4)
        ]
        client.gather(futures)
        reports = client.run_on_scheduler(_kaas_metadata, keys=[f.key for f in futures])
        assert all(r is not None and r["ok"] and r["tenant"] == "rep" for r in reports)
        assert all("seq" in r and ("added" in r or "consts" in r) for r in reports)
        from dask_kaas import cluster_state

        state = cluster_state(client)
        cached = {(e["namespace"], e["key"]) for w in state["workers"].values() for e in w["cache"]}
        assert ("rep", "A") in cached
        before = sum(w["counters"].get("errors", 0) for w in state["workers"].values())
        with pytest.raises(KaasError):  # a failed request's report comes over the stream
            client.submit(matvec_request("missing-key", tenant="rep"), x=np.ones(64, np.float32), pure=False).result()
        import time

        deadline = time.time() + 10
        while time.time() < deadline:
            after = sum(w["counters"].get("errors", 0) for w in cluster_state(client)["workers"].values())
            if after > before:
                break
            time.sleep(0.1)
        assert after == before + 1
