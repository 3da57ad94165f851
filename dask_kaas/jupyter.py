"""Notebook views: a request's HTML table and dataflow graph, and the cluster state as HTML.

Nothing here is needed to run requests; the module imports only the standard
library and NumPy, and uses the ``graphviz`` package only when it (and its
``dot`` program) is there. Every string taken from a request or the cluster is
escaped with :func:`html.escape`.
"""

from __future__ import annotations

import functools
import html
import importlib.util
import math
import os
import shutil
import subprocess

import numpy as np
from dask.utils import format_bytes

from .text import table

IO_ROLES = {"i": "input", "o": "output", "io": "input/output", "t": "temporary"}

_STYLE = (
    "<style>"
    ".kaas-repr table{border-collapse:collapse;margin:0.3em 0 0.8em 0;font-size:12px}"
    ".kaas-repr th,.kaas-repr td{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top}"
    ".kaas-repr th{background:#f3f3f3}"
    ".kaas-repr td.num{text-align:right;font-family:monospace}"
    ".kaas-repr caption{text-align:left;font-weight:bold;padding:2px 0}"
    "</style>"
)


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def human_bytes(n) -> str:
    """``1536 -> '1.50 kiB'`` (Dask's ``format_bytes``); ``None -> '-'``."""
    return "-" if n is None else format_bytes(int(n))


def _dims(dims) -> str:
    dims = tuple(dims)
    while len(dims) > 1 and dims[-1] == 1:
        dims = dims[:-1]
    return "x".join(str(d) for d in dims)


_Cell = tuple[str, bool] | str  # escaped cell HTML, or (cell HTML, numeric)


def _table(caption: str, header: list[str], rows: list[list[_Cell]]) -> str:
    """``rows`` hold already escaped cell HTML; a ``(html, True)`` cell is numeric (right aligned)."""
    out = [f"<table><caption>{_e(caption)}</caption><thead><tr>"]
    out += [f"<th>{_e(h)}</th>" for h in header]
    out.append("</tr></thead><tbody>")
    for row in rows:
        out.append("<tr>")
        for cell in row:
            text, numeric = cell if isinstance(cell, tuple) else (cell, False)
            out.append(f'<td class="num">{text}</td>' if numeric else f"<td>{text}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


# --------------------------------------------------------------------- request
def _buffer_uses(request) -> dict[str, list[tuple[int, str, str]]]:
    """Buffer name -> ``[(kernel index, kernel name, io)]`` in launch order."""
    uses: dict[str, list[tuple[int, str, str]]] = {name: [] for name in request.buffers}
    for index, k in enumerate(request.kernels):
        for buf, io in k.arguments:
            uses[buf.name].append((index, k.kernel, io))
    return uses


def _request_role(request, name: str) -> str:
    roles = []
    if name in request.inputs:
        roles.append("input")
    if name in request.outputs:
        roles.append("output")
    if name in request.temporaries:
        roles.append("temporary")
    return "/".join(roles) or "-"


def request_html(request) -> str:
    """The HTML a notebook shows for a :class:`~dask_kaas.Request`."""
    kernel_rows: list[list[_Cell]] = []
    for index, k in enumerate(request.kernels):
        literals = ", ".join(f"{lit.type}={lit.value!r}" for lit in k.literals) or "-"
        args = ", ".join(f"{buf.name} ({io})" for buf, io in k.arguments) or "-"
        kernel_rows.append(
            [
                (_e(index), True),
                _e(k.library_name),
                f"<b>{_e(k.kernel)}</b>",
                _e(f"{_dims(k.grid)} / {_dims(k.block)}"),
                (_e(k.shared), True),
                _e(literals),
                _e(args),
            ]
        )
    uses = _buffer_uses(request)
    buffer_rows: list[list[_Cell]] = []
    for name, spec in request.buffers.items():
        dtype = np.dtype(spec.dtype).name if spec.dtype is not None else "uint8"
        shape = spec.shape if spec.shape is not None else (spec.size // np.dtype(dtype).itemsize,)
        flags = [f for f, on in (("const", spec.const), ("ephemeral", spec.ephemeral)) if on]
        key = spec.store_key + (f" @{spec.offset}" if spec.offset else "")
        io = "<br>".join(_e(f"{i}:{kernel} {code} ({IO_ROLES[code]})") for i, kernel, code in uses[name])
        buffer_rows.append(
            [
                f"<b>{_e(name)}</b>",
                (_e(human_bytes(spec.size)), True),
                _e(f"{dtype}{list(shape)}"),
                "-" if spec.ephemeral else _e(key),
                _e(", ".join(flags) or "-"),
                _e(_request_role(request, name)),
                io,
            ]
        )
    temp_bytes = sum(request.buffers[n].size for n in request.temporaries)
    totals = [
        ("kernels", len(request.kernels)),
        ("buffers", len(request.buffers)),
        ("const bytes", f"{human_bytes(request.const_bytes)} ({request.const_bytes} B)"),
        ("temporary bytes", f"{human_bytes(temp_bytes)} ({temp_bytes} B)"),
        ("device footprint", f"{human_bytes(request.footprint)} ({request.footprint} B)"),
        ("n_iter", request.n_iter),
        ("tenant", request.tenant if request.tenant is not None else "default"),
        ("deadline", f"{request.deadline:g} s" if request.deadline is not None else "none"),
    ]
    summary = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in totals)
    return "".join(
        [
            '<div class="kaas-repr">',
            _STYLE,
            f"<p><b>{_e(repr(request))}</b></p>",
            _table(
                "Kernels", ["#", "library", "kernel", "grid / block", "shared", "literals", "arguments"], kernel_rows
            ),
            _table("Buffers", ["name", "size", "dtype[shape]", "key", "flags", "role", "io per kernel"], buffer_rows),
            f"<table><caption>Totals</caption><tbody>{summary}</tbody></table>",
            "</div>",
        ]
    )


# ------------------------------------------------------------------- dataflow
def _edges(request) -> list[tuple[str, str, str]]:
    """``(source node, target node, label)``: buffer -> kernel for reads, kernel -> buffer for writes.

    ``io`` reads and writes. A temporary (``t``) is scratch: its first use only
    writes it, later uses read what an earlier kernel left and write it again.
    """
    edges = []
    seen: set[str] = set()
    for index, k in enumerate(request.kernels):
        kid = f"k{index}"
        for buf, io in k.arguments:
            bid = f"b:{buf.name}"
            if io in ("i", "io") or (io == "t" and buf.name in seen):
                edges.append((bid, kid, io))
            if io in ("o", "io", "t"):
                edges.append((kid, bid, io))
            seen.add(buf.name)
    return edges


def _buffer_label(spec) -> str:
    flags = "".join(f" [{f}]" for f, on in (("const", spec.const), ("ephemeral", spec.ephemeral)) if on)
    return f"{spec.name}{flags}\n{human_bytes(spec.size)}"


def _kernel_label(index: int, kernel) -> str:
    return f"{index}: {kernel.kernel}\n{kernel.library_name}"


@functools.lru_cache(maxsize=1)
def _dot_works() -> bool:
    dot = shutil.which("dot")
    if dot is None:
        return False
    try:
        return subprocess.run([dot, "-V"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def graphviz_available() -> bool:
    """Whether the ``graphviz`` package imports and its ``dot`` program runs."""
    return importlib.util.find_spec("graphviz") is not None and _dot_works()


def request_digraph(request):
    """The dataflow graph as a ``graphviz.Digraph`` (needs the ``graphviz`` package; not its ``dot`` program)."""
    import graphviz

    def dot_label(text: str) -> str:  # DOT's escString: a backslash escapes, "\n" is a centred line break
        return text.replace("\\", "\\\\").replace("\n", "\\n")

    g = graphviz.Digraph(name=request.__name__, graph_attr={"rankdir": "LR"})
    for name, spec in request.buffers.items():
        fill = "#dbeafe" if spec.const else "#fef3c7" if name in request.temporaries else "#e5e7eb"
        g.node(f"b:{name}", dot_label(_buffer_label(spec)), shape="ellipse", style="filled", fillcolor=fill)
    for index, k in enumerate(request.kernels):
        g.node(
            f"k{index}", dot_label(_kernel_label(index, k)), shape="box", style="filled,rounded", fillcolor="#bbf7d0"
        )
    for src, dst, label in _edges(request):
        g.edge(src, dst, label=label, style="dashed" if label == "t" else "solid")
    return g


class SVG:
    """SVG text that a notebook displays (``_repr_svg_``); ``data`` is the text."""

    def __init__(self, data: str):
        self.data = data

    def _repr_svg_(self) -> str:
        return self.data

    def __str__(self) -> str:
        return self.data

    def __repr__(self) -> str:
        return f"<SVG {len(self.data)} chars>"


_COL_W = 170
_ROW_H = 70
_NODE_W = 140
_NODE_H = 40
_MARGIN = 20


def _layout(request) -> dict[str, tuple[int, int]]:
    """Node id -> ``(column, row)``: kernel i in column 2i+1, each buffer in the column just before the
    kernel that first reads it, or just after the kernel that first writes it."""
    columns: dict[str, int] = {}
    for index in range(len(request.kernels)):
        columns[f"k{index}"] = 2 * index + 1
    for index, k in enumerate(request.kernels):
        for buf, io in k.arguments:
            bid = f"b:{buf.name}"
            if bid not in columns:
                columns[bid] = 2 * index if io in ("i", "io") else 2 * index + 2
    rows: dict[int, int] = {}
    placed = {}
    for node, col in columns.items():
        placed[node] = (col, rows.get(col, 0))
        rows[col] = rows.get(col, 0) + 1
    return placed


def request_svg(request) -> str:
    """The dataflow graph drawn as SVG with a small layered layout (no Graphviz needed)."""
    placed = _layout(request)
    used_cols = sorted({c for c, _ in placed.values()})
    col_x = {c: _MARGIN + i * _COL_W for i, c in enumerate(used_cols)}
    height_rows = max(r for _, r in placed.values()) + 1
    width = _MARGIN * 2 + (len(used_cols) - 1) * _COL_W + _NODE_W
    height = _MARGIN * 2 + (height_rows - 1) * _ROW_H + _NODE_H + 30

    def box(node):
        col, row = placed[node]
        return col_x[col], _MARGIN + row * _ROW_H

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f"<title>{_e(repr(request))}</title>",
        '<defs><marker id="kaas-arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>',
    ]
    # edges first, so nodes are drawn over them
    for src, dst, label in _edges(request):
        (sx, sy), (dx, dy) = box(src), box(dst)
        sy += _NODE_H / 2
        dy += _NODE_H / 2
        if dx > sx:  # forward: right side of the source to the left side of the target
            x1, x2 = sx + _NODE_W, dx
            bend = (x2 - x1) / 2
            path = f"M{x1},{sy} C{x1 + bend},{sy} {x2 - bend},{dy} {x2},{dy}"
            lx, ly = (x1 + x2) / 2, (sy + dy) / 2 - 4
        else:  # backward (in-place writes): a loop below the nodes
            x1, x2 = sx + _NODE_W / 2, dx + _NODE_W / 2
            y1, y2 = sy + _NODE_H / 2, dy + _NODE_H / 2
            drop = 28
            path = f"M{x1},{y1} C{x1},{y1 + drop} {x2},{y2 + drop} {x2},{y2}"
            lx, ly = (x1 + x2) / 2, max(y1, y2) + drop * 0.75 + 4
        dash = ' stroke-dasharray="4,3"' if label == "t" else ""
        parts.append(
            f'<path d="{path}" fill="none" stroke="#555" stroke-width="1.2"{dash} '
            f'marker-end="url(#kaas-arrow)"><title>{_e(f"{src} -> {dst} ({label})")}</title></path>'
        )
        parts.append(f'<text x="{lx:.1f}" y="{ly:.1f}" text-anchor="middle" fill="#333">{_e(label)}</text>')
    for node in placed:
        x, y = box(node)
        if node.startswith("k"):
            index = int(node[1:])
            label = _kernel_label(index, request.kernels[index])
            parts.append(
                f'<rect x="{x}" y="{y}" width="{_NODE_W}" height="{_NODE_H}" rx="6" fill="#bbf7d0" stroke="#15803d"/>'
            )
        else:
            name = node[2:]
            spec = request.buffers[name]
            label = _buffer_label(spec)
            fill = "#dbeafe" if spec.const else "#fef3c7" if name in request.temporaries else "#e5e7eb"
            parts.append(
                f'<ellipse cx="{x + _NODE_W / 2}" cy="{y + _NODE_H / 2}" rx="{_NODE_W / 2}" '
                f'ry="{_NODE_H / 2}" fill="{fill}" stroke="#555"/>'
            )
        first, _, second = label.partition("\n")
        cx = x + _NODE_W / 2
        parts.append(f'<text x="{cx}" y="{y + 17}" text-anchor="middle" font-weight="bold">{_e(first)}</text>')
        parts.append(f'<text x="{cx}" y="{y + 31}" text-anchor="middle" fill="#444">{_e(second)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def visualize_request(request, filename=None, format=None):
    """``graphviz.Digraph`` where Graphviz works, else an :class:`SVG`; written to ``filename`` if given.

    ``format`` (default: ``filename``'s extension, else ``svg``) is Graphviz's
    output format; without Graphviz only ``svg`` can be written.
    """
    fmt = format
    if fmt is None and filename is not None:
        fmt = os.path.splitext(os.fspath(filename))[1].lstrip(".").lower() or None
    fmt = (fmt or "svg").lower()
    if graphviz_available():
        graph = request_digraph(request)
        if filename is not None:
            with open(filename, "wb") as f:
                f.write(graph.pipe(format=fmt))
        return graph
    svg = SVG(request_svg(request))
    if filename is not None:
        if fmt != "svg":
            raise ValueError(
                f"format {fmt!r} needs Graphviz (the graphviz package and its dot program); "
                "without it only 'svg' can be written"
            )
        with open(filename, "w", encoding="utf-8") as f:
            f.write(svg.data)
    return svg


# -------------------------------------------------------------- cluster state
def _ms(seconds) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "-"
    return f"{seconds * 1e3:.1f} ms"


class ClusterState(dict):
    """:func:`dask_kaas.cluster_state`'s dict, unchanged, with an HTML view for notebooks."""

    __slots__ = ()

    def _repr_html_(self) -> str:
        workers = self.get("workers") or {}
        worker_rows: list[list[_Cell]] = []
        for addr, w in workers.items():
            cache = w.get("cache") or []
            cached_bytes = sum(entry.get("bytes", 0) for entry in cache)
            entries = [
                f"{entry.get('namespace', '?')}:{entry.get('key', '?')} v{entry.get('version', '?')}" for entry in cache
            ]
            listing = ", ".join(entries[:6]) + (f", ... ({len(entries) - 6} more)" if len(entries) > 6 else "")
            summary = f"{len(cache)} buffer{'' if len(cache) == 1 else 's'}, {human_bytes(cached_bytes)}"
            worker_rows.append(
                [
                    f"<b>{_e(addr)}</b>",
                    _e(summary) + (f"<br><small>{_e(listing)}</small>" if listing else ""),
                    (_e(human_bytes(w.get("capacity"))), True),
                    (_e(human_bytes(w.get("used"))), True),
                    (_e(human_bytes(w.get("pinned"))), True),
                    (_e(human_bytes(w.get("free"))), True),
                    (_e(w.get("queue", "-")), True),
                    (_e(_ms(w.get("queued_seconds"))), True),
                ]
            )
        tenant_rows: list[list[_Cell]] = []
        for tenant, t in (self.get("tenants") or {}).items():
            tenant_rows.append(
                [
                    f"<b>{_e(tenant)}</b>",
                    *[(_e(t.get(k, "-")), True) for k in ("submitted", "completed", "rejected", "failed")],
                    (_e(_ms(t.get("latency_p50"))), True),
                    (_e(_ms(t.get("latency_p99"))), True),
                    (_e(f"{t.get('gpu_seconds', 0.0):.3f} s"), True),
                ]
            )
        recent = self.get("recent") or []
        return "".join(
            [
                '<div class="kaas-repr">',
                _STYLE,
                f"<p><b>KaaS cluster</b>: policy {_e(self.get('policy', '?'))}, {len(workers)} workers, "
                f"{len(self.get('tenants') or {})} tenants, {len(recent)} recent requests</p>",
                _table(
                    "Workers", ["worker", "cache", "capacity", "used", "pinned", "free", "queue", "queued"], worker_rows
                ),
                _table(
                    "Tenants",
                    ["tenant", "submitted", "completed", "rejected", "failed", "p50", "p99", "GPU time"],
                    tenant_rows,
                ),
                "</div>",
            ]
        )


# -------------------------------------------------------------- worker stats
class WorkerStats(dict):
    """:func:`dask_kaas.worker_stats`'s dict, unchanged, shown as tables at a terminal and in notebooks."""

    __slots__ = ()

    def _rows(self) -> tuple[list, list]:
        workers, tenants = [], []
        for addr, w in self.items():
            rate = w.get("hit_rate")
            workers.append(
                [
                    addr,
                    w.get("device", "?"),
                    w.get("requests", 0),
                    "-" if rate is None else f"{rate:.0%}",
                    w.get("hits", 0),
                    w.get("misses", 0),
                    w.get("evictions", 0),
                    human_bytes(w.get("bytes_from_store", 0)),
                    human_bytes(w.get("used", 0)),
                    human_bytes(w.get("capacity", 0)),
                    w.get("errors", 0),
                ]
            )
            for tenant, t in sorted((w.get("tenants") or {}).items()):
                lookups = t.get("hits", 0) + t.get("misses", 0)
                tenants.append(
                    [
                        addr,
                        tenant,
                        t.get("requests", 0),
                        f"{t.get('hits', 0) / lookups:.0%}" if lookups else "-",
                        human_bytes(t.get("bytes_loaded", 0)),
                        f"{t.get('seconds', 0.0):.3f} s",
                        t.get("errors", 0),
                    ]
                )
        return workers, tenants

    def __repr__(self) -> str:
        workers, tenants = self._rows()
        out = [table(_WORKER_COLUMNS, workers, right=range(2, 11), rule=True)]
        if tenants:
            out += ["", table(_TENANT_COLUMNS, tenants, right=range(2, 7), rule=True)]
        return "\n".join(out)

    __str__ = __repr__

    def _repr_html_(self) -> str:
        workers, tenants = self._rows()
        return "".join(
            [
                '<div class="kaas-repr">',
                _STYLE,
                _table("Workers", list(_WORKER_COLUMNS), [[_e(c) for c in r] for r in workers]),
                _table("Tenants per worker", list(_TENANT_COLUMNS), [[_e(c) for c in r] for r in tenants]),
                "</div>",
            ]
        )


_WORKER_COLUMNS = (
    "worker",
    "device",
    "requests",
    "hit rate",
    "hits",
    "misses",
    "evictions",
    "loaded",
    "used",
    "capacity",
    "errors",
)
_TENANT_COLUMNS = ("worker", "tenant", "requests", "hit rate", "loaded", "device time", "errors")
