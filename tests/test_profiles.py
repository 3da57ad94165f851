"""Store profiles: stores/<name>.yaml, search order, ${VAR} expansion, resolve_store."""

import os
import textwrap

import dask.config
import pytest

from dask_kaas.errors import StoreError
from dask_kaas.store.profiles import (
    BUILTIN_PROFILES,
    default_store_spec,
    expand_env,
    list_profiles,
    load_profile,
    profile_dirs,
    resolve_store,
)

REPO_STORES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "stores")


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_search_order_config_then_cwd_then_checkout(cwd, tmp_path_factory):
    extra = tmp_path_factory.mktemp("extra")
    with dask.config.set({"kaas.store-profiles": [str(extra)]}):
        dirs = profile_dirs()
    assert dirs[0] == str(extra)
    assert dirs[1] == str(cwd / "stores")
    assert dirs[2] == REPO_STORES  # the source checkout's stores/
    assert profile_dirs() == [str(cwd / "stores"), REPO_STORES]


def test_repo_profiles_are_valid(cwd):
    profiles = list_profiles()
    for name in ("local", "memory", "s3"):
        assert profiles[name] == os.path.join(REPO_STORES, f"{name}.yaml")
    local = load_profile("local")
    assert local == {
        "url": f"file://{os.environ['XDG_DATA_HOME']}/dask-kaas/store",
        "storage_options": {},
        "shared": ["public"],
    }
    assert load_profile("memory")["url"] == "memory://dask-kaas"


def test_s3_profile_expands_environment(cwd, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    p = load_profile("s3")
    assert p["url"] == "s3://dask-kaas"
    assert "endpoint_url" not in p["storage_options"]  # dropped: expanded to ""
    assert p["storage_options"]["client_kwargs"] == {"region_name": "us-east-1"}
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    url, options, shared = resolve_store("s3")
    assert url == "s3://dask-kaas" and shared == ("public",)
    assert options["endpoint_url"] == "http://127.0.0.1:9000"
    assert options["client_kwargs"] == {"region_name": "eu-west-3"}


def test_cwd_profile_overrides_checkout_and_config_dir_overrides_cwd(cwd, tmp_path_factory):
    write(cwd / "stores" / "local.yaml", "url: file://elsewhere\nshared: []\n")
    assert load_profile("local")["url"] == f"file://{cwd}/elsewhere"
    assert load_profile("local")["shared"] == []
    extra = tmp_path_factory.mktemp("extra")
    write(extra / "local.yml", "url: memory://from-config\n")
    with dask.config.set({"kaas.store-profiles": [str(extra)], "kaas.store-shared": ["common"]}):
        assert load_profile("local") == {
            "url": "memory://from-config",
            "storage_options": {},
            "shared": ["common"],
        }  # no 'shared': the config default
        assert list_profiles()["local"] == str(extra / "local.yml")


def test_builtin_profiles_without_any_file(cwd, monkeypatch):
    import dask_kaas.store.profiles as profiles

    monkeypatch.setattr(profiles, "profile_dirs", lambda: [str(cwd / "stores")])
    assert list_profiles() == {name: "<built-in>" for name in BUILTIN_PROFILES}
    assert resolve_store("local") == (f"file://{os.environ['XDG_DATA_HOME']}/dask-kaas/store", {}, ("public",))


def test_unknown_profile_names_it_and_the_dirs(cwd):
    with pytest.raises(StoreError) as e:
        load_profile("nope")
    msg = str(e.value)
    assert "'nope'" in msg and str(cwd / "stores") in msg and REPO_STORES in msg
    with pytest.raises(StoreError, match="not a valid store profile name"):
        load_profile("../etc")


@pytest.mark.parametrize(
    "text, match",
    [
        ("url: [unclosed\n", "not valid YAML"),
        ("- just\n- a list\n", "must be a mapping"),
        ("shared: [a]\n", "'url' must be a non-empty string"),
        ("url: s3://b\nstorage_options: [1, 2]\n", "'storage_options' must be a mapping"),
        ("url: s3://b\nshared: [1]\n", "'shared' must be a list"),
        ("url: s3://b\nbucket: x\n", "unknown field"),
        ("url: s3://b\nstorage_options: {key: '${KAAS_TEST_UNSET_VAR}'}\n", "KAAS_TEST_UNSET_VAR is not set"),
    ],
)
def test_malformed_profile_names_the_file(cwd, monkeypatch, text, match):
    monkeypatch.delenv("KAAS_TEST_UNSET_VAR", raising=False)
    path = write(cwd / "stores" / "bad.yaml", text)
    with pytest.raises(StoreError, match=match) as e:
        load_profile("bad")
    assert str(path) in str(e.value)


def test_expand_env(monkeypatch):
    monkeypatch.setenv("KAAS_A", "x")
    monkeypatch.setenv("KAAS_EMPTY", "")
    monkeypatch.delenv("KAAS_B", raising=False)
    value = {
        "a": "${KAAS_A}/${KAAS_B:-d}",
        "b": "${KAAS_B:-}",
        "c": "$${KAAS_A}",
        "n": 3,
        "nested": {"e": "${KAAS_EMPTY:-fallback}", "gone": "${KAAS_EMPTY}"},
        "l": ["${KAAS_A}"],
    }
    assert expand_env(value) == {"a": "x/d", "c": "${KAAS_A}", "n": 3, "nested": {"e": "fallback"}, "l": ["x"]}


def test_resolve_urls_and_paths(cwd):
    assert resolve_store("s3://bucket/prefix") == ("s3://bucket/prefix", {}, ())
    assert resolve_store("file://rel/dir") == (f"file://{cwd}/rel/dir", {}, ())
    assert resolve_store("./data/kaas") == (f"file://{cwd}/data/kaas", {}, ())
    with dask.config.set({"kaas.store-shared": ["public", "models"]}):
        assert resolve_store("memory://x")[2] == ("public", "models")
    with pytest.raises(StoreError):
        resolve_store("")


def test_default_store_spec():
    assert default_store_spec() == "local"
    with dask.config.set({"kaas.store": "s3"}):
        assert default_store_spec() == "s3"


def test_a_bare_name_is_a_profile_everywhere_a_store_is_named(cwd):
    """BufferStore("local") is the profile local, as open_store and --store read it (never a folder ./local);
    a folder here is named as a path; an unknown name is an error naming it."""
    from dask_kaas import BufferStore
    from dask_kaas.store import open_store

    assert BufferStore("local") == open_store("local") == open_store(None)
    assert not (cwd / "local").exists()
    assert BufferStore("./local").url == f"file://{cwd / 'local'}"
    with pytest.raises(StoreError, match="no store profile 'nowhere'"):
        BufferStore("nowhere")
    assert BufferStore("memory").url == "memory://dask-kaas" and BufferStore("memory").shared == ("public",)
    assert BufferStore("memory", shared=["x"]).shared == ("x",)  # what the caller gives wins
