"""Who may do what under kaas.scheduler.tenant-clients (dask_kaas.plugins.access): pure rules."""

import pytest

from dask_kaas.errors import ConfigError
from dask_kaas.plugins.access import TENANT_RPC, TENANT_STREAM, AccessRules, Role, foreign_keys

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given
from hypothesis import strategies as st


def cert(name):
    return {"subject": ((("commonName", name),),)}


LOCKED = AccessRules(
    "requests-only", ("cluster", "worker-*"), ("operator", "gateway-?"), {"carol.example.org": "carol"}
)


def test_roles_come_from_the_certificates_common_name():
    assert LOCKED.role(cert("worker-3")) == Role("worker", "worker-3")
    assert LOCKED.role(cert("gateway-a")) == Role("operator", "gateway-a")
    assert LOCKED.role(cert("carol.example.org")) == Role("tenant", "carol.example.org", "carol")
    assert LOCKED.role(cert("Worker-3")).kind == "tenant"  # case-sensitive, as common names are
    assert LOCKED.role(None) == Role("anonymous")
    assert LOCKED.role({"subject": ()}).kind == "anonymous"


def test_a_tenant_is_held_to_requests_and_the_cluster_is_not():
    tenant, worker, operator = LOCKED.role(cert("alice")), LOCKED.role(cert("cluster")), LOCKED.role(cert("operator"))
    for op in ("run_function", "broadcast", "scatter", "register_scheduler_plugin", "who_has", "feed", "restart"):
        assert "may not call the scheduler's" in LOCKED.rpc_refusal(tenant, op)
        assert LOCKED.rpc_refusal(worker, op) is None and LOCKED.rpc_refusal(operator, op) is None
    for op in ("gather", "register-client", "identity", "kaas_batch_info"):
        assert LOCKED.rpc_refusal(tenant, op) is None
    assert LOCKED.rpc_refusal(tenant, "register-worker") is None  # refused by kaas.scheduler.worker-names instead
    for op in ("task-finished", "update-data", "log-event", "subscribe-topic"):
        assert "may not send" in LOCKED.stream_refusal(tenant, op)
    assert LOCKED.stream_refusal(tenant, "update-graph") is None
    assert "may not connect to a worker" in LOCKED.peer_refusal(tenant)
    assert LOCKED.peer_refusal(worker) is None and LOCKED.peer_refusal(operator) is None
    assert "without a certificate name" in LOCKED.peer_refusal(Role("anonymous"))


def test_without_the_mode_everything_is_dasks_as_before():
    open_ = AccessRules(None, None, (), {})
    tenant = open_.role(cert("alice"))
    assert open_.rpc_refusal(tenant, "run_function") is None
    assert open_.stream_refusal(tenant, "task-finished") is None
    assert open_.peer_refusal(tenant) is None


def test_the_mode_needs_worker_names_and_a_known_value():
    with pytest.raises(ConfigError, match=r"needs kaas.scheduler.worker-names"):
        AccessRules("requests-only", None, (), {})
    with pytest.raises(ConfigError, match="null or 'requests-only'"):
        AccessRules("tenants", ("w",), (), {})


def test_the_plugin_refuses_the_mode_without_tls_identity():
    import dask

    from dask_kaas import KaasSchedulerPlugin

    with dask.config.set({"kaas.scheduler.tenant-clients": "requests-only", "kaas.scheduler.worker-names": ["w-*"]}):
        with pytest.raises(ConfigError, match=r"needs kaas.scheduler.tenant-identity: tls"):
            KaasSchedulerPlugin()
        with dask.config.set({"kaas.scheduler.tenant-identity": "tls"}):
            assert KaasSchedulerPlugin().access.locked
    with dask.config.set({"kaas.scheduler.operator-names": "gateway"}):
        with pytest.raises(ConfigError, match="operator-names must be a list"):
            KaasSchedulerPlugin()


def test_rules_travel_to_workers_as_a_dict():
    assert AccessRules.from_dict(LOCKED.to_dict()) == LOCKED
    assert AccessRules.from_dict({}) == AccessRules()


def test_foreign_keys_are_those_another_owner_holds():
    owners = {"a": "alice", "b": "bob", "o": ""}
    assert foreign_keys(["a", "b", "o", "new"], owners, "alice") == ["b", "o"]


names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=20)
ops = (
    st.sampled_from(
        sorted(
            TENANT_RPC
            | TENANT_STREAM
            | {"run_function", "broadcast", "scatter", "update-data", "task-finished", "register_worker_plugin"}
        )
    )
    | names
)


@given(names, ops)
def test_a_tenant_gets_exactly_the_allowed_ops(name, op):
    role = LOCKED.role(cert(name))
    rpc, stream = LOCKED.rpc_refusal(role, op), LOCKED.stream_refusal(role, op)
    if role.trusted:
        assert rpc is None and stream is None
    else:
        assert (rpc is None) == (op in TENANT_RPC or op == "register-worker")
        assert (stream is None) == (op in TENANT_STREAM)
        assert role.kind == "tenant" and role.tenant == LOCKED.tenant_map.get(name, name)
