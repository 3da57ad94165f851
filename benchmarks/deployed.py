"""A KaaS cluster as users deploy it: ``dask kaas scheduler`` and ``dask kaas worker`` as separate
processes, the benchmark's client in this one, and readings taken inside the scheduler process.

- :class:`deployed_cluster`: ``with deployed_cluster(device, n_workers) as (address, store_url):``;
- :func:`scheduler_pid`, :func:`process_cpu`: the scheduler process's CPU seconds (all its threads);
- :func:`install_byte_counter` / :func:`read_bytes`: bytes the scheduler process read and wrote on
  its TCP comms (its comms' frames counted where distributed's TCP comm reads and writes them;
  installed in the scheduler with ``client.run_on_scheduler``: measurement code, never the product).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks.gateway import free_port


def _command() -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "dask-kaas")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "dask_kaas.cli"]


class deployed_cluster:
    """``with deployed_cluster("host", 2) as (address, store_url):`` a scheduler process and a worker
    process per worker (one ``dask kaas worker --nworkers N``) on a temporary file store."""

    def __init__(self, device: str = "host", n_workers: int = 2, *, device_memory: str | None = None,
                 env: dict | None = None):
        self.device, self.n_workers, self.device_memory, self.env = device, n_workers, device_memory, env or {}

    def __enter__(self):
        from distributed import Client

        self.root = tempfile.mkdtemp(prefix="kaas-bench-deployed-")
        self.store_url = f"file://{self.root}/store"
        self.address = f"tcp://127.0.0.1:{free_port()}"
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # run_on_scheduler imports benchmarks.*
        path = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, **self.env, "DASK_KAAS__STORE": self.store_url, "PYTHONPATH": path}
        self.logs, self.procs = [], []
        self._start("scheduler", [*_command(), "scheduler", "--host", "127.0.0.1", "--port",
                                  self.address.rsplit(":", 1)[1], "--dashboard-address", ":0"], env)
        worker = [*_command(), "worker", self.address, "--nworkers", str(self.n_workers), "--device", self.device,
                  "--store", self.store_url]
        if self.device_memory:
            worker += ["--device-memory", self.device_memory]
        self._start("workers", worker, env)
        try:
            with Client(self.address, timeout=120) as client:
                client.wait_for_workers(self.n_workers, timeout=180)
        except Exception:
            self.__exit__()
            raise
        return self.address, self.store_url

    def _start(self, name: str, args: list[str], env: dict) -> None:
        log = open(os.path.join(self.root, f"{name}.log"), "w")
        self.logs.append(log)
        self.procs.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                           start_new_session=True))

    def __exit__(self, *exc):
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self.logs:
            log.close()
        shutil.rmtree(self.root, ignore_errors=True)


# ------------------------------------------------------------------ readings inside the scheduler
def scheduler_pid(dask_scheduler=None) -> int:
    return os.getpid()


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, every thread) the process has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_COUNTS = {"read": 0, "written": 0}


def install_byte_counter(dask_scheduler=None) -> bool:
    """Count the bytes of every frame the scheduler's TCP comms read and write (idempotent)."""
    from distributed.comm import tcp

    if getattr(tcp, "_kaas_bench_counting", False):
        return False
    read_bytes_rw, write = tcp.read_bytes_rw, tcp.TCP.write

    async def counted_read(stream, n):
        _COUNTS["read"] += n
        return await read_bytes_rw(stream, n)

    async def counted_write(self, msg, serializers=None, on_error="message"):
        n = await write(self, msg, serializers, on_error)
        _COUNTS["written"] += n
        return n

    tcp.read_bytes_rw, tcp.TCP.write = counted_read, counted_write
    tcp._kaas_bench_counting = True
    return True


def read_bytes(dask_scheduler=None) -> dict:
    return dict(_COUNTS)


def wait_idle(client, timeout: float = 30.0) -> None:
    """Until the scheduler holds no task (the previous arm's results released)."""
    deadline = time.monotonic() + timeout
    while client.run_on_scheduler(_n_tasks) and time.monotonic() < deadline:
        time.sleep(0.05)


def _n_tasks(dask_scheduler=None) -> int:
    return len(dask_scheduler.tasks)
