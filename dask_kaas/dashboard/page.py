"""The ``/kaas`` page of the scheduler's Dask dashboard.

Everything it draws comes from the KaaS scheduler plugin's ``snapshot()``, the
same data :func:`dask_kaas.cluster_state` returns, so the page and the API
never disagree. It refreshes every half second.
"""
from __future__ import annotations

import time
from collections import Counter, deque
from datetime import datetime
from html import escape

from bokeh.layouts import column, row
from bokeh.models import (BasicTicker, ColumnDataSource, DataTable, Div, HoverTool, NumeralTickFormatter, Range1d,
                          TableColumn)
from bokeh.plotting import figure

from .. import compat

PALETTE = {"cached": "#1f77b4", "pinned": "#d62728", "free": "#c7c7c7"}
HISTORY = 600  # points kept in the time series (5 minutes at 2 per second)
RECENT_ROWS = 50
RATE_WINDOW = 5.0  # seconds over which per-tenant throughput is averaged (bars and table alike)


def _mib(n) -> float:
    return (n or 0) / 2**20


class KaasPage:
    """Bokeh models for one browser session, refreshed from the plugin's snapshot by ``update()``."""

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.header = Div(text="", sizing_mode="stretch_width", name="kaas-header")
        self.memory_source = ColumnDataSource(dict(worker=[], cached=[], pinned=[], free=[]))
        self.memory = figure(title="Device memory per worker (MiB)", y_range=[], height=260,
                             sizing_mode="stretch_width", tools="", toolbar_location=None, name="kaas-memory")
        self.memory.hbar_stack(["cached", "pinned", "free"], y="worker", height=0.7, source=self.memory_source,
                               color=[PALETTE["cached"], PALETTE["pinned"], PALETTE["free"]],
                               legend_label=["cached", "pinned", "free"])
        self.memory.legend.orientation = "horizontal"
        self.memory.legend.location = "top_right"
        self.memory.add_tools(HoverTool(tooltips=[("worker", "@worker"), ("cached MiB", "@cached{0.0}"),
                                                  ("pinned MiB", "@pinned{0.0}"), ("free MiB", "@free{0.0}")]))

        self.queue_source = ColumnDataSource(dict(worker=[], queue=[]))
        self.queue = figure(title="Requests in flight per worker", y_range=[], x_range=Range1d(0, 2), height=260,
                            sizing_mode="stretch_width", tools="", toolbar_location=None, name="kaas-queue")
        self.queue.hbar(y="worker", right="queue", height=0.7, source=self.queue_source, color="#ff7f0e")
        self.queue.xaxis.ticker = BasicTicker(min_interval=1)  # requests come whole

        self.series = ColumnDataSource(dict(time=[], hit_rate=[], loaded=[]))
        self.hits = figure(title="Cache hit rate", x_axis_type="datetime", height=220, y_range=(0, 1.05),
                           sizing_mode="stretch_width", tools="", toolbar_location=None, name="kaas-hit-rate")
        self.hits.line("time", "hit_rate", source=self.series, line_width=2, color="#2ca02c")
        self.hits.yaxis.formatter = NumeralTickFormatter(format="0%")
        self.loaded = figure(title="Bytes loaded from the store per second", x_axis_type="datetime", height=220,
                             sizing_mode="stretch_width", tools="", toolbar_location=None, name="kaas-loaded")
        self.loaded.line("time", "loaded", source=self.series, line_width=2, color="#9467bd")
        self.loaded.yaxis.formatter = NumeralTickFormatter(format="0.0 b")

        self.tenant_source = ColumnDataSource(dict(tenant=[], submitted=[], tasks=[], completed=[], throughput=[],
                                                   p50=[], p99=[], rejected=[], failed=[]))
        self.throughput = figure(title=f"Throughput per tenant (requests/s over {RATE_WINDOW:g} s)", x_range=[],
                                 height=240,
                                 sizing_mode="stretch_width", tools="", toolbar_location=None,
                                 name="kaas-throughput")
        self.throughput.vbar(x="tenant", top="throughput", width=0.7, source=self.tenant_source, color="#17becf")
        self.tenants = DataTable(source=self.tenant_source, height=240, sizing_mode="stretch_width", index_position=None,
                                 name="kaas-tenants", columns=[
                                     TableColumn(field="tenant", title="tenant"),
                                     TableColumn(field="submitted", title="submitted"),
                                     TableColumn(field="tasks", title="tasks (batches)"),
                                     TableColumn(field="completed", title="completed"),
                                     TableColumn(field="throughput", title=f"req/s ({RATE_WINDOW:g} s)"),
                                     TableColumn(field="p50", title="latency p50 (ms)"),
                                     TableColumn(field="p99", title="latency p99 (ms)"),
                                     TableColumn(field="rejected", title="rejected"),
                                     TableColumn(field="failed", title="failed"),
                                 ])
        self.recent_source = ColumnDataSource(dict(time=[], tenant=[], kernels=[], worker=[], ms=[], cache=[]))
        self.recent = DataTable(source=self.recent_source, height=300, sizing_mode="stretch_width",
                                index_position=None, name="kaas-recent", columns=[
                                    TableColumn(field="time", title="time"),
                                    TableColumn(field="tenant", title="tenant"),
                                    TableColumn(field="kernels", title="kernels"),
                                    TableColumn(field="worker", title="worker"),
                                    TableColumn(field="ms", title="on the worker (ms)"),
                                    TableColumn(field="cache", title="cache"),
                                ])
        self.root = column(
            self.header,
            row(self.memory, self.queue, sizing_mode="stretch_width"),
            row(self.hits, self.loaded, sizing_mode="stretch_width"),
            row(self.throughput, self.tenants, sizing_mode="stretch_width"),
            Div(text="<b>Recent requests</b>"),
            self.recent,
            sizing_mode="stretch_width",
        )
        self._last: tuple[float, int, int, int] | None = None
        self._completions: deque = deque()  # (time, {tenant: completed}) over the last RATE_WINDOW seconds

    def _throughput(self, now: float, completed: dict) -> dict:
        return _rates(self._completions, now, completed, RATE_WINDOW)

    def update(self) -> None:
        plugin = self.scheduler.plugins.get("kaas")
        if plugin is None:
            self.header.text = "<h3>dask-kaas</h3><p>This scheduler has no KaaS plugin.</p>"
            return
        state = plugin.snapshot()
        now = time.time()
        workers, tenants = state["workers"], state["tenants"]
        kinds = Counter(w.get("device") or "unreported" for w in workers.values())
        devices = " + ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())) or "0"
        self.header.text = (
            f"<h3>dask-kaas: {devices} workers, {len(tenants)} tenants, policy "
            f"<code>{escape(state['policy'])}</code>, {len(plugin.dispatcher)} requests held for fair dispatch</h3>"
        )
        names = list(workers)
        self.memory.y_range.factors = names
        self.queue.y_range.factors = names
        self.memory_source.data = dict(
            worker=names,
            cached=[_mib(w["used"] - w["pinned"]) for w in workers.values()],
            pinned=[_mib(w["pinned"]) for w in workers.values()],
            free=[_mib(w["free"]) for w in workers.values()],
        )
        self.queue_source.data = dict(worker=names, queue=[w["queue"] for w in workers.values()])
        self.queue.x_range.end = max([2, *(w["queue"] + 1 for w in workers.values())])

        hits = sum(w["counters"].get("hits", 0) for w in workers.values())
        misses = sum(w["counters"].get("compulsory_misses", 0) + w["counters"].get("capacity_misses", 0)
                     for w in workers.values())
        loaded = sum(w["counters"].get("bytes_from_store", 0) for w in workers.values())
        if self._last is not None:
            then, hits0, misses0, loaded0 = self._last
            dt = max(now - then, 1e-3)
            lookups = (hits - hits0) + (misses - misses0)
            hit_rate = (hits - hits0) / lookups if lookups else (hits / (hits + misses) if hits + misses else 0)
            self.series.stream(dict(time=[datetime.fromtimestamp(now)], hit_rate=[hit_rate],
                                    loaded=[(loaded - loaded0) / dt]), rollover=HISTORY)
        self._last = (now, hits, misses, loaded)
        throughput = self._throughput(now, {t: s["completed"] for t, s in tenants.items()})

        tenant_names = sorted(tenants)
        self.throughput.x_range.factors = tenant_names

        def ms(v):
            return round(v * 1e3, 1) if v is not None else None

        _set_table(self.tenants, dict(
            tenant=tenant_names,
            submitted=[tenants[t]["submitted"] for t in tenant_names],
            tasks=[tenants[t].get("tasks", 0) for t in tenant_names],
            completed=[tenants[t]["completed"] for t in tenant_names],
            throughput=[round(throughput.get(t, 0.0), 2) for t in tenant_names],
            p50=[ms(tenants[t]["latency_p50"]) for t in tenant_names],
            p99=[ms(tenants[t]["latency_p99"]) for t in tenant_names],
            rejected=[tenants[t]["rejected"] for t in tenant_names],
            failed=[tenants[t]["failed"] for t in tenant_names],
        ))
        recent = state["recent"][-RECENT_ROWS:][::-1]
        _set_table(self.recent, dict(
            time=[datetime.fromtimestamp(r["time"]).strftime("%H:%M:%S.%f")[:-3] for r in recent],
            tenant=[r["tenant"] for r in recent],
            kernels=[" -> ".join(r["kernels"]) for r in recent],
            worker=[r["worker"] for r in recent],
            ms=[round(r["seconds"] * 1e3, 2) for r in recent],
            cache=[("miss" if r["misses"] else "hit" if r["hits"] else "-") if r["ok"] else "error" for r in recent],
        ))


def _rates(window: deque, now: float, completed: dict, seconds: float) -> dict:
    """Requests per second per tenant over the last ``seconds``, from snapshots of completed counts."""
    window.append((now, completed))
    while len(window) > 2 and now - window[1][0] >= seconds:
        window.popleft()
    then, before = window[0]
    dt = now - then
    return {t: (c - before.get(t, 0)) / dt if dt > 0 else 0.0 for t, c in completed.items()}


def _set_table(table: DataTable, data: dict) -> None:
    """New rows for a DataTable, redrawn even when their number stays the same.

    BokehJS redraws a DataTable when its CDSView's indices change; replacing the data with as
    many rows leaves the indices equal, so the table would keep showing the old rows. Any change
    of the table model itself makes it rerender, so the rows' version goes into its ``tags``.
    """
    if table.source.data == data:
        return
    table.source.data = data
    table.tags = [(table.tags[0] if table.tags else 0) + 1]


def kaas_doc(scheduler, extra, doc):
    """The Bokeh document of ``/kaas`` (signature of distributed's dashboard applications)."""
    page = KaasPage(scheduler)
    page.update()
    compat.style_dashboard_document(doc, page, extra, "Dask: KaaS")
