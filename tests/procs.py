"""Real processes for tests: a free port, commands started in the background and stopped at the end."""

import os
import signal
import socket
import subprocess
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """Commands started in the background, their output in files, all stopped at the end."""

    def __init__(self, directory: Path):
        self.directory, self.procs = directory, {}

    def start(self, name: str, *args: str, env: dict | None = None) -> subprocess.Popen:
        """Start ``args`` as ``name``; ``env``: variables added to this process's environment."""
        log = open(self.directory / f"{name}.log", "w")
        proc = subprocess.Popen(
            [*args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.directory,
            start_new_session=True,
            env=None if env is None else {**os.environ, **env},
        )
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.directory / f"{name}.log").read_text()

    def kill(self, name: str, sig=signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        os.killpg(proc.pid, sig)
        proc.wait(timeout=60)

    def stop_all(self) -> None:
        for name in list(self.procs):
            try:
                self.kill(name, signal.SIGTERM)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self.procs.pop(name, None).pid if name in self.procs else 0, signal.SIGKILL)
