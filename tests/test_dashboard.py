"""The /kaas dashboard page, rendered by a real headless Chromium."""

import re
import shutil
import time
import urllib.request

import numpy as np
import pytest
from distributed import Client
from helpers import matvec_request

from dask_kaas import LocalKaasCluster, cluster_state

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with LocalKaasCluster(
        n_workers=2,
        device="host",
        store=f"file://{tmp_path_factory.mktemp('dash-store')}",
        dashboard_address="127.0.0.1:0",
    ) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def ran(cluster):
    """Requests of three tenants on both workers; returns (tenants, workers)."""
    tenants = ["alice", "bob", "carol"]
    with Client(cluster) as client:
        for t in tenants:
            cluster.store.put("A", np.eye(64, dtype=np.float32), namespace=t)
        workers = sorted(client.scheduler_info()["workers"])
        futures = [
            client.submit(matvec_request("A", tenant=t), x=np.ones(64, np.float32), workers=[w], pure=False)
            for t in tenants
            for w in workers
            for _ in range(3)
        ]
        client.gather(futures)
        state = cluster_state(client)
    assert set(state["workers"]) == set(workers)
    return tenants, workers


def page_url(cluster, route="kaas"):
    return cluster.dashboard_link.rsplit("/", 1)[0] + "/" + route


def test_page_is_listed_in_the_dashboard_navigation(cluster, ran):
    status = urllib.request.urlopen(page_url(cluster, "status"), timeout=30).read().decode()
    assert 'href="kaas"' in status
    page = urllib.request.urlopen(page_url(cluster), timeout=30).read().decode()
    assert "bokeh" in page.lower() and 'href="kaas"' in page


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (installed by .ci/run)")
def test_page_renders_workers_and_tenants_in_chromium(cluster, ran, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    tenants, workers = ran
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.goto(page_url(cluster), wait_until="load", timeout=60_000)
            # Bokeh renders into shadow roots; Playwright's selectors pierce them.
            page.get_by_text(f"{len(workers)} host workers, {len(tenants)} tenants").wait_for(timeout=30_000)
            for tenant in tenants:
                page.get_by_text(tenant, exact=True).first.wait_for(timeout=30_000)
            for worker in workers:  # the recent-requests table names the worker of each request
                page.get_by_text(worker, exact=True).first.wait_for(timeout=30_000)
            assert page.locator("canvas").count() >= 4  # the plots were drawn
            page.wait_for_timeout(1500)  # a couple of refreshes, so the time series have points
            shot = tmp_path / "kaas-dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 20_000


def completed(row: str) -> int:
    """The completed-requests cell of a tenant row's text (tenant, submitted, tasks, completed, ...)."""
    return int(row.split("\n")[3])


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (installed by .ci/run)")
def test_tables_change_while_a_workload_runs(cluster, ran):
    """The tenant table and the recent-requests table follow the workload after the page has loaded
    (BokehJS redraws a DataTable only when its row count changes, unless told otherwise)."""
    import threading

    sync_api = pytest.importorskip("playwright.sync_api")
    tenants, _ = ran
    stop = threading.Event()

    def workload():
        # a bounded trickle: once it ends the tables stop redrawing, so a page the machine's other work
        # starves of CPU (a redraw empties the grid briefly) still settles and can be read
        with Client(cluster) as client:
            for _ in range(15):
                if stop.is_set():
                    break
                client.gather(
                    [
                        client.submit(matvec_request("A", tenant=t), x=np.ones(64, np.float32), pure=False)
                        for t in tenants
                    ]
                )
                stop.wait(0.2)  # two cores must leave the browser time to draw

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.goto(page_url(cluster), wait_until="load", timeout=60_000)
            page.get_by_text("alice", exact=True).first.wait_for(timeout=30_000)

            def snapshot():
                """(alice's row, the newest recent request) once both are drawn (a redraw empties the grid briefly)."""
                deadline = time.time() + 60
                while time.time() < deadline:
                    rows = page.locator(".slick-row").all_inner_texts()  # one read of every table
                    alice = [r for r in rows if r.split("\n", 1)[0] == "alice"]
                    recent = [r for r in rows if re.match(r"\d\d:\d\d:\d\d\.\d{3}\n", r)]  # starts with a time
                    if alice and recent:
                        return alice[0], recent[0]
                    page.wait_for_timeout(100)
                raise AssertionError("the tables were not drawn")

            page.wait_for_timeout(1000)
            before, recent_before = snapshot()
            thread = threading.Thread(target=workload)
            thread.start()
            try:
                # until alice's completed count moves (her row may change in another column first)
                deadline = time.time() + 90
                after, recent_after = snapshot()
                while completed(after) <= completed(before) and time.time() < deadline:
                    page.wait_for_timeout(250)
                    after, recent_after = snapshot()
            finally:
                stop.set()
                thread.join()
        finally:
            browser.close()
    assert completed(after) > completed(before), f"the tenant table stopped updating: {before!r} -> {after!r}"
    assert recent_after != recent_before, "the recent-requests table stopped updating"


def test_rates_over_a_window_and_tables_that_redraw():
    from collections import deque

    from bokeh.models import ColumnDataSource, DataTable, TableColumn

    from dask_kaas.dashboard.page import _rates, _set_table

    window = deque()
    assert _rates(window, 100.0, {"a": 10}, 5.0) == {"a": 0.0}
    assert _rates(window, 101.0, {"a": 20}, 5.0) == {"a": 10.0}
    assert _rates(window, 106.0, {"a": 70, "b": 6}, 5.0) == {"a": 10.0, "b": 1.2}  # 50 in the last 5 s
    table = DataTable(source=ColumnDataSource(dict(x=[1, 2])), columns=[TableColumn(field="x")])
    _set_table(table, dict(x=[3, 4]))  # the same number of rows: the table must still be told
    assert table.source.data["x"] == [3, 4] and table.tags == [1]
    _set_table(table, dict(x=[3, 4]))  # nothing new: no redraw
    assert table.tags == [1]


def wait_for_reports(cluster, client) -> dict:
    """worker_stats once the scheduler's picture has every worker's report (and a history sample after)."""
    from dask_kaas import worker_stats

    plugin = cluster.scheduler.plugins["kaas"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        stats = worker_stats(client)
        views = cluster_state(client)["workers"]
        if all(views[w]["counters"].get("requests", 0) == stats[w]["requests"] for w in stats):
            after = time.time()
            while time.monotonic() < deadline and plugin.history.samples[-1][0] <= after:
                time.sleep(0.1)
            return stats
        time.sleep(0.1)
    raise AssertionError("the workers' reports did not reach the scheduler")


@pytest.fixture(scope="module")
def scanned(cluster, ran):
    """Beside the three tenants, a fourth scanning one-off consts; every report in; worker_stats then."""
    tenants, workers = ran
    with Client(cluster) as client:
        for i in range(12):
            cluster.store.put(f"scan/{i}", np.eye(64, dtype=np.float32) * i, namespace="scanner")
        client.gather(
            [
                client.submit(matvec_request(f"scan/{i}", tenant="scanner"), x=np.ones(64, np.float32), pure=False)
                for i in range(12)
            ]
        )
        client.gather(
            [
                client.submit(matvec_request("A", tenant="alice"), x=np.ones(64, np.float32), pure=False)
                for _ in range(4)
            ]
        )
        stats = wait_for_reports(cluster, client)
    return [*tenants, "scanner"], workers, stats


def tenant_expectation(stats: dict, tenant: str) -> dict:
    from dask_kaas.text import format_bytes

    rows = [w["tenants"][tenant] for w in stats.values() if tenant in w["tenants"]]
    hits, misses = sum(r["hits"] for r in rows), sum(r["misses"] for r in rows)
    return {"hit_rate": f"{hits / (hits + misses):.0%}", "loaded": format_bytes(sum(r["bytes_loaded"] for r in rows))}


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (installed by .ci/run)")
def test_per_tenant_and_per_worker_figures_match_the_workers_in_chromium(cluster, scanned):
    """The tenant table's cache columns and the worker table agree with worker_stats, under a scanning tenant."""
    from dask_kaas.text import format_bytes

    sync_api = pytest.importorskip("playwright.sync_api")
    tenants, workers, stats = scanned
    expected_tenants = {t: tenant_expectation(stats, t) for t in tenants}
    expected_workers = {
        w: [
            str(stats[w]["hits"]),
            str(stats[w]["misses"]),
            str(stats[w]["evictions"]),
            format_bytes(stats[w]["bytes_from_store"]),
        ]
        for w in workers
    }
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1800, "height": 1400})
            page.goto(page_url(cluster), wait_until="load", timeout=60_000)
            page.get_by_text("scanner", exact=True).first.wait_for(timeout=30_000)
            deadline = time.time() + 60
            while True:
                rows = [r.split("\n") for r in page.locator(".slick-row").all_inner_texts()]
                tenant_rows = {r[0]: r for r in rows if r and r[0] in tenants and len(r) >= 14}
                worker_rows = {r[0]: r for r in rows if r and r[0] in workers and len(r) >= 9}
                got_tenants = {t: {"hit_rate": r[9], "loaded": r[10]} for t, r in tenant_rows.items()}
                got_workers = {w: [r[4], r[5], r[6], r[7]] for w, r in worker_rows.items()}
                if (got_tenants == expected_tenants and got_workers == expected_workers) or time.time() > deadline:
                    break
                page.wait_for_timeout(250)
        finally:
            browser.close()
    assert got_tenants == expected_tenants
    assert got_workers == expected_workers
    assert int(tenant_rows["scanner"][12 - 1]) >= 0  # evictions caused: a number, shown


def test_a_reloaded_page_draws_the_history_the_scheduler_kept(cluster, scanned):
    """A new page (a reload) starts from the plugin's history, not from empty; idle intervals are gaps."""
    import math

    from dask_kaas.dashboard.page import KaasPage

    plugin = cluster.scheduler.plugins["kaas"]
    samples = len(plugin.history.samples)
    assert samples >= 2
    page = KaasPage(cluster.scheduler)
    page.update()
    times = page.series.data["time"]
    assert len(times) >= samples - 1  # one interval between each two samples (more may have come since)
    rates = page.series.data["hit_rate"]
    assert any(not math.isnan(r) for r in rates)  # the intervals with lookups
    time.sleep(2.5 * plugin.history.interval)  # idle: intervals with no lookups at all
    page.update()
    assert math.isnan(page.series.data["hit_rate"][-1])
    assert set(page.worker_lines.data["worker"]) == set(scanned[1])
    assert "scanner" in page.tenant_lines.data["tenant"]


def test_why_a_request_waited_and_why_one_was_turned_away(cluster, scanned):
    """Recent requests name their Dask task and split their time (waiting for a slot, load, copies, kernels);
    a request rejected at admission is listed with its predicted finish against its deadline."""
    from dask_kaas import AdmissionRejected
    from dask_kaas.dashboard.page import KaasPage

    with Client(cluster) as client:
        done = client.submit(matvec_request("scan/3", tenant="scanner"), x=np.ones(64, np.float32), pure=False)
        done.result()
        turned_away = client.submit(
            matvec_request("A", tenant="bob", deadline=1e-6), x=np.ones(64, np.float32), pure=False
        )
        with pytest.raises(AdmissionRejected):
            turned_away.result()
        wait_for_reports(cluster, client)
    page = KaasPage(cluster.scheduler)
    page.update()
    recent = page.recent_source.data
    row = recent["key"].index(str(done.key))
    assert recent["tenant"][row] == "scanner" and recent["waited"][row] is not None
    assert all(
        recent[phase][row] is not None and recent[phase][row] >= 0 for phase in ("load", "h2d", "kernels_ms", "d2h")
    )
    rejected = page.rejected_source.data
    row = rejected["key"].index(str(turned_away.key))
    assert rejected["tenant"][row] == "bob" and rejected["deadline"][row] == 0.0  # 1 µs, in ms to one decimal
    assert rejected["predicted"][row] > rejected["deadline"][row]


def test_individual_plots_for_jupyterlab(cluster, ran):
    """Each /individual-kaas-* plot is served and listed where JupyterLab's Dask extension looks."""
    import json

    from dask_kaas.dashboard.page import INDIVIDUAL

    listed = json.loads(urllib.request.urlopen(page_url(cluster, "individual-plots.json"), timeout=30).read())
    assert set(INDIVIDUAL) <= set(listed.values())
    assert "Individual Kaas Memory" in listed
    for route in INDIVIDUAL:
        html = urllib.request.urlopen(page_url(cluster, route.lstrip("/")), timeout=30).read().decode()
        assert "bokeh" in html.lower()


def test_edge_states_read_for_a_person():
    from dask_kaas.dashboard.page import _gpu_text, _workers_text

    assert _workers_text({}) == "no workers yet"
    assert _workers_text({"a": {"device": None}, "b": {"device": None}}) == "2 workers that have run no request yet"
    assert (
        _workers_text({"a": {"device": "host"}, "b": {"device": None}})
        == "1 host worker + 1 worker that has run no request yet"
    )
    assert _workers_text({"a": {"device": "cuda"}, "b": {"device": "cuda"}}) == "2 cuda workers"
    assert _gpu_text({}) == "-" and _gpu_text({"gpu_utilization": 87.4}) == "87%"


def test_idle_plots_have_no_negative_axes(cluster):
    from dask_kaas.dashboard.page import KaasPage

    page = KaasPage(cluster.scheduler)
    page.update()
    assert page.loaded.y_range.start == 0 and page.memory.x_range.start == 0
    assert page.worker_evictions.y_range.start == 0
    assert not page.memory.center or all(type(r).__name__ != "Legend" for r in page.memory.center)  # off the bars
