"""TLS peers' names and who may join as a worker (pure)."""

from dask_kaas.plugins.identity import common_name, worker_refusal


def cert(*names):
    return {"subject": ((("countryName", "NL"),), *((("commonName", n),) for n in names))}


def test_the_common_name_is_the_first_in_the_subject():
    assert common_name(cert("alice", "bob")) == "alice"
    assert common_name(cert()) is None and common_name(None) is None and common_name({}) is None


def test_only_names_the_patterns_allow_join_as_workers():
    patterns = ["cluster", "worker-*"]
    assert worker_refusal(cert("alice"), None) is None  # no patterns: any certificate the CA signed
    assert worker_refusal(None, None) is None
    assert worker_refusal(cert("cluster"), patterns) is None
    assert worker_refusal(cert("worker-17"), patterns) is None
    assert "'alice' may not join" in worker_refusal(cert("alice"), patterns)
    assert "'Worker-1' may not join" in worker_refusal(cert("Worker-1"), patterns)  # case-sensitive
    assert "'cluster.evil' may not join" in worker_refusal(cert("cluster.evil"), patterns)
    assert "common name" in worker_refusal(None, patterns) and "common name" in worker_refusal(cert(), patterns)
    assert "may not join" in worker_refusal(cert("x"), [])  # an empty list: no worker may
