"""`dask-kaas store ls|put|get|rm|profiles` on file stores: through the installed command where the working
directory or environment matters, else the same command line in this process."""

import json
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest

from dask_kaas.store import BufferStore

BIN = os.path.dirname(sys.executable)


def kaas(*args, cwd=None, env=None, timeout=120):
    """``dask-kaas ARGS``: through the installed command where a working directory or environment is given,
    else the same command line in this process (click's runner: the same code, without a process start)."""
    if cwd is not None or env is not None:
        return subprocess.run(
            [os.path.join(BIN, "dask-kaas"), *args],
            capture_output=True,
            text=True,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            timeout=timeout,
        )
    from click.testing import CliRunner

    from dask_kaas.cli import main

    try:
        runner = CliRunner(mix_stderr=False)  # click < 8.2 mixes them unless told
    except TypeError:
        runner = CliRunner()
    result = runner.invoke(main, list(args), catch_exceptions=False)
    return SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr)


def ok(proc):
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture
def url(tmp_path):
    return f"file://{tmp_path / 'store'}"


def test_put_ls_get_rm_round_trip(tmp_path, url):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.save(tmp_path / "a.npy", a)
    out = ok(kaas("store", "put", "model/w", str(tmp_path / "a.npy"), "--store", url))
    assert "version 1" in out and "float32 (3, 4)" in out
    out = ok(kaas("store", "put", "model/w", str(tmp_path / "a.npy"), "--store", url))
    assert "version 2" in out

    out = ok(kaas("store", "ls", "--store", url))
    line = next(line for line in out.splitlines() if line.startswith("model/w"))
    assert line.split()[:6] == ["model/w", "2", "48", "B", "float32", "(3,"]
    assert "1 keys" in out
    (row,) = [json.loads(line) for line in ok(kaas("store", "ls", "--json", "--store", url)).splitlines()]
    assert row["key"] == "model/w" and row["version"] == 2 and row["nbytes"] == 48 and row["shape"] == [3, 4]
    assert row["namespace"] == "default" and row["dtype"] == "float32"

    out = ok(kaas("store", "get", "model/w", "--store", url))
    assert "version 2" in out and "float32 (3, 4)" in out and "11." in out
    ok(kaas("store", "get", "model/w", "-o", str(tmp_path / "back.npy"), "--store", url))
    np.testing.assert_array_equal(np.load(tmp_path / "back.npy"), a)
    np.testing.assert_array_equal(BufferStore(url).get("model/w"), a)  # the same store from Python

    assert "removed default/model/w" in ok(kaas("store", "rm", "model/w", "--store", url))
    assert "no keys" in ok(kaas("store", "ls", "--store", url))


@pytest.mark.slow
def test_namespaces_prefix_and_all_namespaces(tmp_path, url):
    store = BufferStore(url)
    store.put("w1", np.ones(300, np.float64), namespace="alice")
    store.put("w2", np.ones(2, np.int8), namespace="alice")
    store.put("other", np.zeros(4, np.uint16), namespace="bob")
    store.put("w1", np.zeros(1, np.float32))
    out = ok(kaas("store", "ls", "--store", url, "--namespace", "alice"))
    assert "w1" in out and "w2" in out and "other" not in out
    assert "2400 B (2.34 kiB)" in out  # bytes, human readable too
    listed = ok(kaas("store", "ls", "w1", "--store", url, "-n", "alice")).splitlines()
    assert [line.split()[0] for line in listed[1:-1]] == ["w1"]  # PREFIX (the last line names the store)
    out = ok(kaas("store", "ls", "--all-namespaces", "--store", url))
    rows = {tuple(line.split()[:2]) for line in out.splitlines()}
    assert {("alice", "w1"), ("alice", "w2"), ("bob", "other"), ("default", "w1")} <= rows
    assert out.splitlines()[0].split()[:3] == ["namespace", "key", "version"]
    rows = [json.loads(line) for line in ok(kaas("store", "ls", "-A", "--json", "--store", url)).splitlines()]
    assert {(r["namespace"], r["key"]) for r in rows} == {
        ("alice", "w1"),
        ("alice", "w2"),
        ("bob", "other"),
        ("default", "w1"),
    }
    for r in rows:  # ISO written times from the store's float timestamps
        assert isinstance(r["written"], float)
    out = ok(kaas("store", "get", "other", "--store", url, "--namespace", "bob"))
    assert out.startswith("bob/other version 1: uint16 (4,)")
    ok(kaas("store", "rm", "w1", "--store", url, "--namespace", "alice"))
    assert store.keys(namespace="alice") == ["w2"] and store.keys() == ["w1"]


def test_put_raw_bytes_with_dtype(tmp_path, url):
    raw = np.arange(6, dtype="<i4")
    (tmp_path / "w.bin").write_bytes(raw.tobytes())
    assert "int32 (6,)" in ok(kaas("store", "put", "raw", str(tmp_path / "w.bin"), "--dtype", "int32", "--store", url))
    np.testing.assert_array_equal(BufferStore(url).get("raw"), raw)
    assert "uint8 (24,)" in ok(kaas("store", "put", "bytes", str(tmp_path / "w.bin"), "--store", url))
    proc = kaas("store", "put", "odd", str(tmp_path / "w.bin"), "--dtype", "complex128", "--store", url)
    assert proc.returncode == 2 and "not a whole number" in proc.stderr


@pytest.mark.slow
def test_by_profile_name_and_default_profile(tmp_path):
    (tmp_path / "stores").mkdir()
    (tmp_path / "stores" / "mine.yaml").write_text(
        textwrap.dedent("""\
        url: file://data/mine     # relative to the current directory
        shared: [public]
        storage_options: {}
    """)
    )
    np.save(tmp_path / "a.npy", np.arange(5, dtype=np.int64))
    assert "version 1" in ok(kaas("store", "put", "k", "a.npy", "--store", "mine", cwd=tmp_path))
    assert (tmp_path / "data" / "mine").is_dir()
    assert "k" in ok(kaas("store", "ls", "--store", "mine", cwd=tmp_path))
    np.testing.assert_array_equal(BufferStore(f"file://{tmp_path}/data/mine").get("k"), np.arange(5))
    # no --store: kaas.store, else the profile "local" (the user's data directory, whatever the cwd)
    ok(kaas("store", "put", "d", "a.npy", cwd=tmp_path, env={"XDG_DATA_HOME": str(tmp_path / "xdg")}))
    assert BufferStore(f"file://{tmp_path}/xdg/dask-kaas/store").keys() == ["d"]
    ok(kaas("store", "put", "e", "a.npy", cwd=tmp_path, env={"DASK_KAAS__STORE": "mine"}))
    assert BufferStore(f"file://{tmp_path}/data/mine").keys() == ["e", "k"]
    out = ok(kaas("store", "profiles", cwd=tmp_path))
    assert "mine" in out and str(tmp_path / "stores" / "mine.yaml") in out and "local" in out


@pytest.mark.slow
def test_errors_print_type_and_message_exit_2(tmp_path, url):
    proc = kaas("store", "get", "missing", "--store", url)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: StoreKeyError: ") and "'missing'" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = kaas("store", "rm", "missing", "--store", url, "--namespace", "alice")
    assert proc.returncode == 2 and "StoreKeyError" in proc.stderr
    proc = kaas("store", "ls", "--store", "no-such-profile", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: StoreError: ")
    assert "'no-such-profile'" in proc.stderr and str(tmp_path / "stores") in proc.stderr
    assert "Traceback" not in proc.stderr
    (tmp_path / "stores").mkdir()
    (tmp_path / "stores" / "broken.yaml").write_text("url: [oops\n")
    proc = kaas("store", "ls", "--store", "broken", cwd=tmp_path)
    assert proc.returncode == 2 and "broken.yaml" in proc.stderr and "not valid YAML" in proc.stderr
    np.save(tmp_path / "a.npy", np.ones(3))
    proc = kaas("store", "put", "bad//key", str(tmp_path / "a.npy"), "--store", url)
    assert proc.returncode == 2 and proc.stderr.startswith("error: StoreError: ")
