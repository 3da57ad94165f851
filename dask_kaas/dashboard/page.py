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
from bokeh.models import (
    BasicTicker,
    ColumnDataSource,
    DataRange1d,
    FactorRange,
    HoverTool,
    NumeralTickFormatter,
    Range1d,
)
from bokeh.models.widgets.markups import Div
from bokeh.models.widgets.tables import DataTable, TableColumn
from bokeh.palettes import Category10
from bokeh.plotting import figure

from .. import compat
from ..text import format_bytes

PALETTE = {"cached": "#1f77b4", "pinned": "#d62728", "free": "#c7c7c7"}
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
        self.memory_workers = FactorRange()  # the plots' ranges, kept to update them typed
        self.memory = figure(
            title="Device memory per worker (MiB)",
            x_range=DataRange1d(start=0),
            y_range=self.memory_workers,
            height=260,
            sizing_mode="stretch_width",
            tools="",
            toolbar_location=None,
            name="kaas-memory",
        )
        self.memory.hbar_stack(
            ["cached", "pinned", "free"],
            y="worker",
            height=0.7,
            source=self.memory_source,
            color=[PALETTE["cached"], PALETTE["pinned"], PALETTE["free"]],
            legend_label=["cached", "pinned", "free"],
        )
        self.memory.legend.orientation = "horizontal"
        self.memory.add_layout(self.memory.legend[0], "above")  # off the bars
        self.memory.add_tools(
            HoverTool(
                tooltips=[
                    ("worker", "@worker"),
                    ("cached MiB", "@cached{0.0}"),
                    ("pinned MiB", "@pinned{0.0}"),
                    ("free MiB", "@free{0.0}"),
                ]
            )
        )

        self.queue_source = ColumnDataSource(dict(worker=[], queue=[]))
        self.queue_workers = FactorRange()
        self.queue_requests = Range1d(start=0, end=2)
        self.queue = figure(
            title="Requests in flight per worker",
            y_range=self.queue_workers,
            x_range=self.queue_requests,
            height=260,
            sizing_mode="stretch_width",
            tools="",
            toolbar_location=None,
            name="kaas-queue",
        )
        self.queue.hbar(y="worker", right="queue", height=0.7, source=self.queue_source, color="#ff7f0e")
        self.queue.xaxis.ticker = BasicTicker(min_interval=1)  # requests come whole

        self.series = ColumnDataSource(dict(time=[], hit_rate=[], loaded=[]))  # the plugin's history
        self.hits = figure(
            title="Cache hit rate",
            x_axis_type="datetime",
            height=220,
            y_range=Range1d(start=0, end=1.05),
            sizing_mode="stretch_width",
            tools="",
            toolbar_location=None,
            name="kaas-hit-rate",
        )
        self.hits.line("time", "hit_rate", source=self.series, line_width=2, color="#2ca02c")
        self.hits.yaxis.formatter = NumeralTickFormatter(format="0%")
        self.loaded = figure(
            title="Bytes loaded from the store per second",
            x_axis_type="datetime",
            height=220,
            y_range=DataRange1d(start=0),
            sizing_mode="stretch_width",
            tools="",
            toolbar_location=None,
            name="kaas-loaded",
        )
        self.loaded.line("time", "loaded", source=self.series, line_width=2, color="#9467bd")
        self.loaded.yaxis.formatter = NumeralTickFormatter(format="0.0 b")

        self.worker_lines = ColumnDataSource(dict(xs=[], hit_rate=[], evictions=[], loaded=[], worker=[], color=[]))
        self.worker_hits = _lines(
            "Cache hit rate per worker",
            "kaas-worker-hit-rate",
            self.worker_lines,
            "hit_rate",
            "worker",
            Range1d(start=0, end=1.05),
            "0%",
        )
        self.evictions_range = Range1d(start=0, end=1)
        self.worker_evictions = _lines(
            "Evictions per worker per interval",
            "kaas-worker-evictions",
            self.worker_lines,
            "evictions",
            "worker",
            self.evictions_range,
        )
        self.worker_loaded = _lines(
            "Bytes loaded from the store per worker per second",
            "kaas-worker-loaded",
            self.worker_lines,
            "loaded",
            "worker",
            DataRange1d(start=0),
            "0.0 b",
        )
        self.worker_table = _data_table(
            "kaas-workers",
            160,
            [
                ("worker", "worker"),
                ("state", "state"),
                ("requests", "requests"),
                ("hit_rate", "cache hits"),
                ("hits", "hits"),
                ("misses", "misses"),
                ("evictions", "evictions"),
                ("loaded", "loaded"),
                ("cached", "cached consts"),
                ("gpu", "GPU utilisation"),
            ],
        )
        self.worker_table_source = self.worker_table.source
        self.tenant_lines = ColumnDataSource(dict(xs=[], hit_rate=[], tenant=[], color=[]))
        self.tenant_hits = _lines(
            "Cache hit rate per tenant",
            "kaas-tenant-hit-rate",
            self.tenant_lines,
            "hit_rate",
            "tenant",
            Range1d(start=0, end=1.05),
            "0%",
        )

        self.tenants = _data_table(
            "kaas-tenants",
            240,
            [
                ("tenant", "tenant"),
                ("submitted", "submitted"),
                ("tasks", "tasks (batches)"),
                ("completed", "completed"),
                ("throughput", f"req/s ({RATE_WINDOW:g} s)"),
                ("p50", "latency p50 (ms)"),
                ("p99", "latency p99 (ms)"),
                ("rejected", "rejected"),
                ("failed", "failed"),
                ("hit_rate", "cache hits"),
                ("loaded", "loaded"),
                ("evictions", "evictions caused"),
                ("device_s", "device s"),
                ("held", "held"),
            ],
        )
        self.tenant_source = self.tenants.source
        self.throughput_tenants = FactorRange()
        self.throughput = figure(
            title=f"Throughput per tenant (requests/s over {RATE_WINDOW:g} s)",
            x_range=self.throughput_tenants,
            height=240,
            sizing_mode="stretch_width",
            tools="",
            toolbar_location=None,
            name="kaas-throughput",
        )
        self.throughput.vbar(x="tenant", top="throughput", width=0.7, source=self.tenant_source, color="#17becf")
        self.cached = _data_table(
            "kaas-cached",
            240,
            [
                ("worker", "worker"),
                ("tenant", "tenant (namespace)"),
                ("key", "key"),
                ("size", "size"),
                ("last_used", "last used"),
            ],
        )
        self.cache_source = self.cached.source
        self.recent = _data_table(
            "kaas-recent",
            300,
            [
                ("time", "time"),
                ("tenant", "tenant"),
                ("kernels", "kernels"),
                ("worker", "worker"),
                ("ms", "on the worker (ms)"),
                ("cache", "cache"),
                ("waited", "waited for a slot (ms)"),
                ("load", "load (ms)"),
                ("h2d", "h2d (ms)"),
                ("kernels_ms", "kernels (ms)"),
                ("d2h", "d2h (ms)"),
                ("key", "Dask task"),
            ],
        )
        self.recent_source = self.recent.source
        self.rejected = _data_table(
            "kaas-rejected",
            160,
            [
                ("time", "time"),
                ("tenant", "tenant"),
                ("calls", "calls"),
                ("predicted", "predicted finish (ms)"),
                ("deadline", "deadline (ms)"),
                ("key", "Dask task"),
            ],
        )
        self.rejected_source = self.rejected.source
        self.root = column(
            self.header,
            row(self.memory, self.queue, sizing_mode="stretch_width"),
            row(self.hits, self.loaded, sizing_mode="stretch_width"),
            row(self.worker_hits, self.worker_evictions, self.worker_loaded, sizing_mode="stretch_width"),
            self.worker_table,
            row(self.throughput, self.tenants, sizing_mode="stretch_width"),
            self.tenant_hits,
            Div(text="<b>Recent requests</b>"),
            self.recent,
            Div(text="<b>Rejected at admission</b> (predicted to miss their deadline)"),
            self.rejected,
            Div(text="<b>What is cached where</b> (the scheduler's picture, most recently used first)"),
            self.cached,
            sizing_mode="stretch_width",
        )
        self._history_at: float | None = None  # the plugin's last history sample drawn
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
        self.header.text = (
            f"<h3>dask-kaas: {_workers_text(workers)}, {len(tenants)} tenants, policy "
            f"<code>{escape(state['policy'])}</code>, {len(plugin.dispatcher)} requests held for fair dispatch</h3>"
        )
        names = list(workers)
        self.memory_workers.factors = names
        self.queue_workers.factors = names
        self.memory_source.data = dict(
            worker=names,
            cached=[_mib(w["used"] - w["pinned"]) for w in workers.values()],
            pinned=[_mib(w["pinned"]) for w in workers.values()],
            free=[_mib(w["free"]) for w in workers.values()],
        )
        self.queue_source.data = dict(worker=names, queue=[w["queue"] for w in workers.values()])
        self.queue_requests.end = max([2, *(w["queue"] + 1 for w in workers.values())])

        self._draw_history(plugin.history)
        throughput = self._throughput(now, {t: s["completed"] for t, s in tenants.items()})

        tenant_names = sorted(tenants)
        self.throughput_tenants.factors = tenant_names

        def ms(v):
            return round(v * 1e3, 1) if v is not None else None

        _set_table(
            self.tenants,
            dict(
                tenant=tenant_names,
                submitted=[tenants[t]["submitted"] for t in tenant_names],
                tasks=[tenants[t].get("tasks", 0) for t in tenant_names],
                completed=[tenants[t]["completed"] for t in tenant_names],
                throughput=[round(throughput.get(t, 0.0), 2) for t in tenant_names],
                p50=[ms(tenants[t]["latency_p50"]) for t in tenant_names],
                p99=[ms(tenants[t]["latency_p99"]) for t in tenant_names],
                rejected=[tenants[t]["rejected"] for t in tenant_names],
                failed=[tenants[t]["failed"] for t in tenant_names],
                hit_rate=[_percent(tenants[t].get("hit_rate")) for t in tenant_names],
                loaded=[format_bytes(tenants[t].get("bytes_loaded", 0)) for t in tenant_names],
                evictions=[tenants[t].get("evictions_caused", 0) for t in tenant_names],
                device_s=[round(tenants[t].get("gpu_seconds", 0.0), 3) for t in tenant_names],
                held=[tenants[t].get("held", 0) for t in tenant_names],
            ),
        )
        _set_table(
            self.worker_table,
            dict(
                worker=names,
                state=["reported" if w.get("reports") else "no report yet" for w in workers.values()],
                requests=[w["counters"].get("requests", 0) for w in workers.values()],
                hit_rate=[_percent(_hit_rate(w["counters"])) for w in workers.values()],
                hits=[w["counters"].get("hits", 0) for w in workers.values()],
                misses=[
                    w["counters"].get("compulsory_misses", 0) + w["counters"].get("capacity_misses", 0)
                    for w in workers.values()
                ],
                evictions=[w["counters"].get("evictions", 0) for w in workers.values()],
                loaded=[format_bytes(w["counters"].get("bytes_from_store", 0)) for w in workers.values()],
                cached=[len(w.get("cache", ())) for w in workers.values()],
                gpu=[_gpu_text(compat.worker_metrics(self.scheduler, address)) for address in names],
            ),
        )
        cached = sorted(
            ((address, c) for address, w in workers.items() for c in w.get("cache", ())),
            key=lambda item: -(item[1].get("last_used") or 0),
        )[: RECENT_ROWS * 4]
        _set_table(
            self.cached,
            dict(
                worker=[address for address, _ in cached],
                tenant=[c["namespace"] for _, c in cached],
                key=[c["key"] for _, c in cached],
                size=[format_bytes(c["bytes"]) for _, c in cached],
                last_used=[
                    datetime.fromtimestamp(c["last_used"]).strftime("%H:%M:%S") if c.get("last_used") else "-"
                    for _, c in cached
                ],
            ),
        )
        recent = state["recent"][-RECENT_ROWS:][::-1]
        _set_table(
            self.recent,
            dict(
                time=[datetime.fromtimestamp(r["time"]).strftime("%H:%M:%S.%f")[:-3] for r in recent],
                tenant=[r["tenant"] for r in recent],
                kernels=[" -> ".join(r["kernels"]) for r in recent],
                worker=[r["worker"] if r["worker"] in workers else f"{r['worker']} (gone)" for r in recent],
                ms=[round(r["seconds"] * 1e3, 2) for r in recent],
                cache=[
                    ("miss" if r["misses"] else "hit" if r["hits"] else "-") if r["ok"] else "error" for r in recent
                ],
                key=[str(r.get("key", "")) for r in recent],
                waited=[ms(r.get("waited")) for r in recent],
                load=[ms(r.get("phases", {}).get("load")) for r in recent],
                h2d=[ms(r.get("phases", {}).get("h2d")) for r in recent],
                kernels_ms=[ms(r.get("phases", {}).get("kernels")) for r in recent],
                d2h=[ms(r.get("phases", {}).get("d2h")) for r in recent],
            ),
        )
        rejected = state.get("rejections", [])[-RECENT_ROWS:][::-1]
        _set_table(
            self.rejected,
            dict(
                time=[datetime.fromtimestamp(r["time"]).strftime("%H:%M:%S.%f")[:-3] for r in rejected],
                tenant=[r["tenant"] for r in rejected],
                key=[str(r["key"]) for r in rejected],
                calls=[r["calls"] for r in rejected],
                predicted=[ms(r["predicted"]) for r in rejected],
                deadline=[ms(r["deadline"]) for r in rejected],
            ),
        )

    def _draw_history(self, history) -> None:
        """The plots over time, from the plugin's history (so a reloaded page shows the last minutes);
        redrawn when it has a new sample."""
        if not history.samples or history.samples[-1][0] == self._history_at:
            return
        self._history_at = history.samples[-1][0]
        series = history.series()
        times = [datetime.fromtimestamp(t) for t in series["time"]]
        self.series.data = dict(time=times, hit_rate=series["hit_rate"], loaded=series["loaded"])
        workers = sorted(series["workers"])
        self.worker_lines.data = dict(
            xs=[times] * len(workers),
            worker=workers,
            color=_colors(len(workers)),
            hit_rate=[series["workers"][w]["hit_rate"] for w in workers],
            evictions=[series["workers"][w]["evictions"] for w in workers],
            loaded=[series["workers"][w]["loaded"] for w in workers],
        )
        top = max([1, *(v for w in workers for v in series["workers"][w]["evictions"] if v == v)])
        self.evictions_range.end = top * 1.1
        tenants = sorted(series["tenants"])
        self.tenant_lines.data = dict(
            xs=[times] * len(tenants),
            tenant=tenants,
            color=_colors(len(tenants)),
            hit_rate=[series["tenants"][t]["hit_rate"] for t in tenants],
        )


def _lines(title: str, name: str, source: ColumnDataSource, field: str, who: str, y_range, number: str | None = None):
    """One line per worker or tenant over time (``xs`` and ``field`` lists of ``source``), named on hover."""
    fig = figure(
        title=title,
        x_axis_type="datetime",
        height=220,
        y_range=y_range,
        sizing_mode="stretch_width",
        tools="",
        toolbar_location=None,
        name=name,
    )
    fig.multi_line("xs", field, source=source, color="color", line_width=2)
    if number is not None:
        fig.yaxis.formatter = NumeralTickFormatter(format=number)
    fig.add_tools(HoverTool(tooltips=[(who, f"@{who}")]))
    return fig


def _data_table(name: str, height: int, columns: list[tuple[str, str]]) -> DataTable:
    """A table of ``(field, title)`` columns over a source of those fields."""
    source = ColumnDataSource({field: [] for field, _ in columns})
    return DataTable(
        source=source,
        height=height,
        sizing_mode="stretch_width",
        index_position=None,
        name=name,
        columns=[TableColumn(field=field, title=title) for field, title in columns],
    )


def _workers_text(workers: dict) -> str:
    """``2 host workers``, ``1 cuda worker + 1 worker that has run no request yet``, ``no workers``."""
    kinds = Counter(w.get("device") for w in workers.values())
    waiting = kinds.pop(None, 0)
    parts = [f"{n} {kind} worker{'s' * (n != 1)}" for kind, n in sorted(kinds.items())]
    if waiting:
        parts.append(
            f"{waiting} worker{'s' * (waiting != 1)} that {'have' if waiting != 1 else 'has'} run no request yet"
        )
    return " + ".join(parts) or "no workers yet"


def _gpu_text(metrics: dict) -> str:
    """GPU utilisation as distributed's workers report it (pynvml, on CUDA workers), or ``-``."""
    value = metrics.get("gpu_utilization")
    return "-" if value is None else f"{value:.0f}%"


def _colors(n: int) -> list[str]:
    return [Category10[10][i % 10] for i in range(n)]


def _hit_rate(counters: dict) -> float | None:
    hits = counters.get("hits", 0)
    lookups = hits + counters.get("compulsory_misses", 0) + counters.get("capacity_misses", 0)
    return hits / lookups if lookups else None


def _percent(value) -> str:
    return "-" if value is None else f"{value:.0%}"


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
    source = table.source
    if not isinstance(source, ColumnDataSource):  # _data_table's tables have one
        raise TypeError(f"table {table.name!r} has a {type(source).__name__}, not a ColumnDataSource")
    if source.data == data:
        return
    source.data = data
    table.tags = [(table.tags[0] if table.tags else 0) + 1]


def kaas_doc(scheduler, extra, doc):
    """The Bokeh document of ``/kaas`` (signature of distributed's dashboard applications)."""
    page = KaasPage(scheduler)
    page.update()
    compat.style_dashboard_document(doc, page, extra, "Dask: KaaS")


# the plots JupyterLab's Dask extension can dock (it lists the dashboard's /individual-* routes)
INDIVIDUAL = {
    "/individual-kaas-memory": "memory",
    "/individual-kaas-hit-rate": "hits",
    "/individual-kaas-loaded": "loaded",
    "/individual-kaas-worker-hit-rate": "worker_hits",
    "/individual-kaas-worker-evictions": "worker_evictions",
    "/individual-kaas-worker-loaded": "worker_loaded",
    "/individual-kaas-tenant-hit-rate": "tenant_hits",
    "/individual-kaas-throughput": "throughput",
}


def individual_doc(attribute: str):
    """The Bokeh document of one ``/individual-kaas-*`` plot: that model of a :class:`KaasPage` alone."""

    def make(scheduler, extra, doc):
        page = KaasPage(scheduler)
        page.update()
        model = getattr(page, attribute)
        model.sizing_mode = "stretch_both"
        compat.plain_dashboard_document(doc, page, model)

    return make
