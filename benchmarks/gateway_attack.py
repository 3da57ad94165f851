"""Gateway attack: gzip bombs of nested JSON arrays against the gateway, and what another tenant sees meanwhile.

Deployed as users deploy: ``dask kaas scheduler``, ``dask kaas worker --nworkers 2`` (host) and
``dask-kaas gateway`` (default limits: ``kaas.gateway.max-body`` 64 MiB, ``max-json`` 16 MiB) each
their own process, the callers in this one. Two tenants with bearer tokens:

- ``victim`` calls ``vadd`` of 1024 float32 (``w`` a const cached on the workers) with
  ``tritonclient.http`` (binary tensors, its default), one call after another, each result checked;
- ``mallory`` owns ``wide``, a ``vadd`` declaring 1M float32 elements: the largest JSON budget
  a function can give its callers (``max-json``), so its bombs are inflated and looked at as far as
  any can be. Each of ``attackers`` threads sends one bomb after another (the next as soon as the
  last is answered): a body of ~8 KB, ``Content-Encoding: gzip``, that inflates to 8 MiB of empty
  arrays, one of ``[[],[],...]`` as the tensor's data, ``[[[[...]]]]``, or 100 levels of nesting
  then a flat list of zeros.

1. Idle: ``calls`` victim calls; their p50 and p99.
2. Under attack: victim calls for ``seconds`` while the attackers run; the gateway process's RSS
   (``psutil``) sampled every 20 ms from just before the attack to its end.

Reported: the victim's p99 under attack over its idle p99 (target <= 2), the gateway's RSS growth
(its peak during the attack minus its RSS before it; target <= 100 MiB), the bombs sent, the status
of each answer (400 or 413 expected: refused) and how long each took.
"""

from __future__ import annotations

import gzip
import http.client
import os
import shutil
import tempfile
import threading
import time

import numpy as np

from benchmarks.common import Option, Suite, WrongResult, main, met
from dask_kaas.text import table

N = 1024
WIDE = 1 << 20
BOMB_BYTES = 8 << 20
TARGETS = {"p99_ratio": 2.0, "rss_growth_mib": 100.0}


def bombs(size: int = BOMB_BYTES) -> list[bytes]:
    """Three gzip bodies of ``size`` bytes of JSON each: ``[[],[],...]`` as data, ``[[[...]]]``, and 100
    levels of nesting then a flat list of zeros."""
    head = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[%d],"data":' % WIDE
    wide = head + b"[" + b"[]," * ((size - len(head)) // 3) + b"[]]}]}"
    deep = b"[" * size
    nested = head + b"[" * 100 + b"0," * ((size - len(head)) // 2) + b"0" + b"]" * 100 + b"}]}"
    return [gzip.compress(body, 9) for body in (wide, deep, nested)]


def percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


class Attack:
    """``with Attack(url, model, token, n):`` ``n`` threads each sending one bomb after another over
    its own connection; ``answers`` holds ``(status, seconds)`` of each (status None: no answer)."""

    def __init__(self, url: str, model: str, token: str, n: int = 3):
        self.host, self.port = url.rsplit(":", 1)
        self.path = f"/v2/models/{model}/infer"
        self.headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        }
        self.bodies = bombs()
        self.answers: list[tuple[int | None, float]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]

    def _run(self, i: int) -> None:
        body = self.bodies[i % len(self.bodies)]
        conn = None
        while not self.stop.is_set():
            start = time.perf_counter()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, int(self.port), timeout=120)
                conn.request("POST", self.path, body, self.headers)
                response = conn.getresponse()
                response.read()
                status = response.status
                if response.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                status = None
                if conn is not None:
                    conn.close()
                conn = None
            self.answers.append((status, time.perf_counter() - start))
        if conn is not None:
            conn.close()

    def __enter__(self) -> Attack:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=180)

    def summary(self) -> dict:
        statuses: dict[str, int] = {}
        for status, _ in self.answers:
            statuses[str(status)] = statuses.get(str(status), 0) + 1
        seconds = [s for _, s in self.answers]
        return {
            "bombs": len(self.answers),
            "statuses": statuses,
            "bomb_bytes": [len(b) for b in self.bodies],
            "inflated_bytes": BOMB_BYTES,
            "answer_ms": {
                "p50": percentile(seconds, 50) * 1e3,
                "p99": percentile(seconds, 99) * 1e3,
                "max": max(seconds, default=float("nan")) * 1e3,
            },
        }


class RssSampler:
    """``with RssSampler(pid) as rss:`` the process's RSS every ``interval`` seconds: ``rss.before``,
    ``rss.peak``, ``rss.after`` (bytes)."""

    def __init__(self, pid: int, interval: float = 0.02):
        import psutil

        self.process, self.interval = psutil.Process(pid), interval
        self.before = self.peak = self.after = self.process.memory_info().rss
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> RssSampler:
        self.before = self.peak = self.process.memory_info().rss
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.after = self.process.memory_info().rss
        self.peak = max(self.peak, self.after)

    def mib(self) -> dict:
        return {
            "before": self.before / 2**20,
            "peak": self.peak / 2**20,
            "after": self.after / 2**20,
            "growth": (self.peak - self.before) / 2**20,
        }


def victim_calls(call, *, calls: int | None = None, seconds: float | None = None) -> list[float]:
    """Seconds of each ``call()``: ``calls`` of them, or as many as ``seconds`` allow."""
    out: list[float] = []
    end = None if seconds is None else time.perf_counter() + seconds
    while (calls is None or len(out) < calls) and (end is None or time.perf_counter() < end):
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return out


def latency(seconds: list[float]) -> dict:
    return {
        "calls": len(seconds),
        "p50_ms": percentile(seconds, 50) * 1e3,
        "p99_ms": percentile(seconds, 99) * 1e3,
        "max_ms": max(seconds, default=float("nan")) * 1e3,
    }


# ------------------------------------------------------------------ suite
SIZES = {
    "full": {"calls": 500, "seconds": 20.0, "attackers": 3},
    "quick": {"calls": 200, "seconds": 6.0, "attackers": 3},
    "smoke": {"calls": 10, "seconds": 1.0, "attackers": 3},
}


def measure(config, p: dict) -> dict:
    from benchmarks import deployed
    from benchmarks.gateway import check, gateway_call, gateway_process, triton_client, vadd_function
    from dask_kaas import BufferStore
    from dask_kaas.functions import FunctionRepository
    from dask_kaas.gateway.tokens import add_token

    log = config.log
    tmp = tempfile.mkdtemp(prefix="kaas-bench-attack-")
    rng = np.random.default_rng(0)
    payload = {
        "parameters": {
            **p,
            "n": N,
            "wide_n": WIDE,
            "workers": 2,
            "deployment": "dask kaas scheduler + dask kaas worker --nworkers 2 + dask-kaas gateway, "
            "each its own process; callers here",
        },
        "method": __doc__,
    }
    try:
        with deployed.deployed_cluster("host", 2) as (address, store_url):
            store, tokens = BufferStore(store_url), os.path.join(tmp, "tokens.yaml")
            repo = FunctionRepository(store)
            w = rng.standard_normal(N).astype(np.float32)
            store.put(f"bench/gateway/w{N}", w, namespace="victim")
            repo.put("vadd", vadd_function(N), namespace="victim")
            store.put(f"bench/gateway/w{WIDE}", np.zeros(WIDE, np.float32), namespace="mallory")
            repo.put("wide", vadd_function(WIDE), namespace="mallory")
            victim, mallory = add_token(tokens, "victim"), add_token(tokens, "mallory")
            gateway = gateway_process(address, store_url, tokens, os.path.join(tmp, "gateway.log"))
            with gateway as url:
                tc = triton_client(url)
                x = rng.standard_normal(N).astype(np.float32)
                want = x + w

                def call():
                    check(gateway_call(tc, "vadd", victim, x), want, "the victim's call")

                victim_calls(call, calls=20)  # warm: the const on the workers, the connection open
                log(f"  idle: {p['calls']} victim calls")
                payload["idle"] = latency(victim_calls(call, calls=p["calls"]))
                log(f"  attack: {p['attackers']} bomb senders for {p['seconds']:g} s")
                with RssSampler(gateway.proc.pid) as rss, Attack(url, "wide", mallory, p["attackers"]) as attack:
                    under = victim_calls(call, seconds=p["seconds"])
                payload["attack"] = {**latency(under), **attack.summary()}
                payload["rss_mib"] = rss.mib()
                refused = sum(n for s, n in attack.summary()["statuses"].items() if s in ("400", "413"))
                if refused != len(attack.answers):
                    raise WrongResult(
                        f"gateway_attack: bombs answered {attack.summary()['statuses']}, "
                        "not all refused with 400 or 413"
                    )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ratio = payload["attack"]["p99_ms"] / payload["idle"]["p99_ms"]
    payload["targets"] = {
        "p99_ratio": {"value": ratio, "rule": f"<= {TARGETS['p99_ratio']:g}: victim p99 under attack / idle p99"},
        "rss_growth_mib": {
            "value": payload["rss_mib"]["growth"],
            "rule": f"<= {TARGETS['rss_growth_mib']:g}: gateway RSS peak during the attack - before",
        },
    }
    for name, t in payload["targets"].items():
        t["met"] = bool(t["value"] <= TARGETS[name])
    return payload


def draw(payload: dict, plt):
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 4))
    idle, attack = payload["idle"], payload["attack"]
    xs = np.arange(2)
    ax1.bar(xs - 0.2, [idle["p50_ms"], attack["p50_ms"]], 0.4, label="p50")
    ax1.bar(xs + 0.2, [idle["p99_ms"], attack["p99_ms"]], 0.4, label="p99")
    ax1.set_xticks(xs, ["idle", f"{payload['parameters']['attackers']} gzip bombers"])
    ax1.set_ylabel("victim ms per call")
    ax1.set_title(f"another tenant: p99 {payload['targets']['p99_ratio']['value']:.2f}x idle")
    ax1.legend()
    rss = payload["rss_mib"]
    ax2.bar([0, 1, 2], [rss["before"], rss["peak"], rss["after"]], color=["C2", "C3", "C2"])
    ax2.set_xticks([0, 1, 2], ["before", "peak", "after"])
    ax2.set_ylabel("gateway RSS, MiB")
    ax2.set_title(f"growth {rss['growth']:.1f} MiB, {attack['bombs']} bombs")
    fig.suptitle(f"gateway under parse-amplification attack ({payload['device']})")
    return fig


def report(payload: dict):
    idle, attack, rss = payload["idle"], payload["attack"], payload["rss_mib"]
    yield table(
        ["victim", "calls", "p50 ms", "p99 ms", "max ms"],
        [
            [name, r["calls"], f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['max_ms']:.1f}"]
            for name, r in (("idle", idle), ("under attack", attack))
        ],
        right=range(1, 5),
    )
    yield ""
    yield (
        f"bombs: {attack['bombs']} ({', '.join(f'{s}: {n}' for s, n in sorted(attack['statuses'].items()))}), "
        f"each answered in p50 {attack['answer_ms']['p50']:.1f} ms, max {attack['answer_ms']['max']:.1f} ms"
    )
    yield (
        f"gateway RSS: {rss['before']:.1f} MiB before, peak {rss['peak']:.1f}, after {rss['after']:.1f} "
        f"(growth {rss['growth']:.1f} MiB)"
    )
    for name, t in payload["targets"].items():
        yield f"{name}: {t['value']:.2f} ({t['rule']}) {met(t['met'])}"


SUITE = Suite(
    "gateway_attack",
    __doc__,
    measure,
    report,
    SIZES,
    draw=draw,
    host_only=True,
    options=(
        Option("--calls", int, "idle victim calls"),
        Option("--seconds", float, "seconds of attack"),
        Option("--attackers", int, "threads sending bombs"),
    ),
)


if __name__ == "__main__":  # python -m benchmarks.gateway_attack ...: the same as python -m benchmarks gateway_attack
    raise SystemExit(main(suite="gateway_attack"))
