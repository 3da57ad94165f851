"""A KaaS cluster as users deploy it: ``dask kaas scheduler`` and ``dask kaas worker`` as separate
processes, the benchmark's client in this one, and readings taken inside the scheduler process.

- :class:`deployed_cluster`: ``with deployed_cluster(device, n_workers) as (address, store_url):``;
- :func:`scheduler_pid`, :func:`process_cpu`: the scheduler process's CPU seconds (all its threads);
- :func:`install_byte_counter` / :func:`read_bytes`: bytes the scheduler process read and wrote on
  its TCP comms (its comms' frames counted where distributed's TCP comm reads and writes them;
  installed in the scheduler with ``client.run_on_scheduler``: measurement code, never the product).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from benchmarks.gateway import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where the benchmarks package is


def _command() -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "dask-kaas")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "dask_kaas.cli"]


class background:
    """``with background(args, log_path, env):`` a command in its own session, its output in
    ``log_path``, the benchmarks package importable (``run_on_scheduler`` and the suites' no-ops pickle
    ``benchmarks.*`` functions by reference); SIGTERM to its process group at the end (SIGKILL after 30 s)."""

    def __init__(self, args: list[str], log_path: str, env: dict | None = None):
        self.args, self.log_path, self.env = args, log_path, env or {}

    def __enter__(self) -> background:
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, **self.env, "PYTHONPATH": ROOT + (os.pathsep + path if path else "")}
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            self.args, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        return self

    def __exit__(self, *exc):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()

    def tail(self) -> str:
        with open(self.log_path) as f:
            return f"{' '.join(self.args[1:3])}:\n{f.read()[-3000:]}"


class deployed_cluster:
    """``with deployed_cluster("host", 2) as (address, store_url):`` ``dask kaas scheduler`` and one
    ``dask kaas worker --nworkers N`` as their own processes, on ``store_url`` (default: a temporary
    file store); a cluster that does not come up raises with the tails of their logs."""

    def __init__(
        self,
        device: str = "host",
        n_workers: int = 2,
        *,
        device_memory: str | None = None,
        store_url: str | None = None,
    ):
        self.device, self.n_workers, self.device_memory, self.store_url = device, n_workers, device_memory, store_url

    def __enter__(self):
        from distributed import Client

        self.root = tempfile.mkdtemp(prefix="kaas-bench-deployed-")
        store_url = self.store_url or f"file://{self.root}/store"
        port = free_port()
        address = f"tcp://127.0.0.1:{port}"
        env = {"DASK_KAAS__STORE": store_url}
        worker = [
            *_command(),
            "worker",
            address,
            "--nworkers",
            str(self.n_workers),
            "--device",
            self.device,
            "--store",
            store_url,
            "--no-dashboard",
            "--local-directory",
            self.root,
        ]
        if self.device_memory:
            worker += ["--device-memory", self.device_memory]
        self.stack = contextlib.ExitStack()
        procs = [
            self.stack.enter_context(
                background(
                    [*_command(), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                    os.path.join(self.root, "scheduler.log"),
                    env,
                )
            ),
            self.stack.enter_context(background(worker, os.path.join(self.root, "workers.log"), env)),
        ]
        try:
            with Client(address, timeout=120) as client:
                client.wait_for_workers(self.n_workers, timeout=180)
        except Exception as e:
            tails = "\n".join(p.tail() for p in procs)
            self.__exit__()
            raise RuntimeError(f"the KaaS cluster did not start ({e}):\n{tails}") from e
        return address, store_url

    def __exit__(self, *exc):
        self.stack.close()
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
    """Until the scheduler holds no task (the previous arm's results released); said on stderr when it
    still holds some after ``timeout`` (a client whose results are never released: its loop blocked)."""
    deadline = time.monotonic() + timeout
    while (left := client.run_on_scheduler(_n_tasks)) and time.monotonic() < deadline:
        time.sleep(0.05)
    if left:
        print(
            f"warning: the scheduler still holds {left} task(s) after {timeout:g} s; measuring anyway",
            file=sys.stderr,
            flush=True,
        )


def _n_tasks(dask_scheduler=None) -> int:
    return len(dask_scheduler.tasks)
