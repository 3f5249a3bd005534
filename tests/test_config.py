"""NodeConfig and load_config (kvstore/config.py): defaults, precedence, sizes, bad values."""

from __future__ import annotations

import dataclasses
import json

import pytest

from kvstore.config import ModelSpec, NodeConfig, load_config, parse_size
from kvstore.errors import ConfigError, InvalidArgument


def test_defaults_are_valid():
    cfg = NodeConfig()
    assert load_config(env={}) == cfg
    assert cfg.page_bytes & (cfg.page_bytes - 1) == 0
    assert cfg.max_chunk_bytes <= cfg.cpu_capacity_bytes
    assert cfg.port != cfg.data_port
    assert cfg.eviction_policy == "lru" and cfg.models == ()


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        NodeConfig().port = 1  # type: ignore[misc]


def test_config_error_is_an_invalid_argument():
    assert issubclass(ConfigError, InvalidArgument)


@pytest.mark.parametrize("text,expect", [
    (4096, 4096),
    ("4096", 4096),
    ("64MiB", 64 << 20),
    ("64 MiB", 64 << 20),
    ("64mib", 64 << 20),
    ("64Mi", 64 << 20),
    ("1GiB", 1 << 30),
    ("1.5GiB", 3 << 29),
    ("2KiB", 2048),
    ("2K", 2000),
    ("2KB", 2000),
    ("3MB", 3_000_000),
    ("1T", 10**12),
    ("1TiB", 1 << 40),
    ("10B", 10),
])
def test_parse_size(text, expect):
    assert parse_size(text) == expect


@pytest.mark.parametrize("bad", ["", "MiB", "-1MiB", "12 parsecs", "1e9", 1.5, True, None, [1]])
def test_parse_size_rejects_garbage_naming_the_setting(bad):
    with pytest.raises(ConfigError, match="cpu_capacity_bytes"):
        parse_size(bad, "cpu_capacity_bytes")


# ---- file -> environment -> overrides ------------------------------------------------------
def write(tmp_path, name: str, text: str):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.fixture(params=["yaml", "json"])
def config_file(request, tmp_path):
    settings = {"port": 1000, "data_port": 1001, "cpu_capacity_bytes": "128MiB",
                "max_chunk_bytes": "16MiB", "eviction_policy": "fifo", "fsync": True,
                "models": [{"model_id": "m", "kv_dtype": "bfloat16", "chunk_tokens": 128}]}
    if request.param == "json":
        return write(tmp_path, "node.json", json.dumps(settings))
    return write(tmp_path, "node.yaml", """\
port: 1000
data_port: 1001
cpu_capacity_bytes: 128MiB
max_chunk_bytes: 16MiB
eviction_policy: fifo
fsync: true
models:
  - {model_id: m, kv_dtype: bfloat16, chunk_tokens: 128}
""")


def test_file_values_are_loaded(config_file):
    cfg = load_config(config_file, env={})
    assert cfg.port == 1000 and cfg.data_port == 1001
    assert cfg.cpu_capacity_bytes == 128 << 20 and cfg.max_chunk_bytes == 16 << 20
    assert cfg.eviction_policy == "fifo" and cfg.fsync is True
    assert cfg.models == (ModelSpec("m", "bfloat16", chunk_tokens=128),)
    assert cfg.page_bytes == NodeConfig().page_bytes  # unset keys keep their defaults


def test_precedence_file_then_env_then_overrides(config_file):
    env = {"KVSTORE_PORT": "2000", "KVSTORE_CPU_CAPACITY_BYTES": "256MiB",
           "KVSTORE_FSYNC": "off", "OTHER_PORT": "9"}
    cfg = load_config(config_file, env=env)
    assert cfg.port == 2000 and cfg.data_port == 1001          # env beats file
    assert cfg.cpu_capacity_bytes == 256 << 20 and cfg.fsync is False
    cfg = load_config(config_file, env=env, overrides={"port": 3000, "data_port": None})
    assert cfg.port == 3000                                     # overrides beat env
    assert cfg.data_port == 1001                                # None = not given
    assert cfg.eviction_policy == "fifo"                        # untouched file value


def test_environment_is_read_from_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("KVSTORE_EVICTION_POLICY", "lfu")
    monkeypatch.setenv("KVSTORE_MODELS", '[{"model_id": "x", "kv_dtype": "float16"}]')
    cfg = load_config()
    assert cfg.eviction_policy == "lfu"
    assert cfg.models == (ModelSpec("x", "float16"),)


@pytest.mark.parametrize("raw,expect", [("1", True), ("true", True), ("YES", True),
                                        ("on", True), ("0", False), ("False", False),
                                        ("no", False), ("off", False)])
def test_bool_spellings(raw, expect):
    assert load_config(env={"KVSTORE_DATA_PLANE": raw}).data_plane is expect


def test_empty_file_gives_defaults(tmp_path):
    assert load_config(write(tmp_path, "empty.yaml", ""), env={}) == NodeConfig()


# ---- bad values: ConfigError naming the setting --------------------------------------------
@pytest.mark.parametrize("values,setting", [
    ({"cpu_capacity_bytes": -1}, "cpu_capacity_bytes"),
    ({"gpu_capacity_bytes": -4096}, "gpu_capacity_bytes"),
    ({"disk_capacity_bytes": -1}, "disk_capacity_bytes"),
    ({"port": 70000}, "port"),
    ({"port": -1}, "port"),
    ({"data_port": 65536}, "data_port"),
    ({"port": 5000, "data_port": 5000}, "data_port"),
    ({"page_bytes": 5000}, "page_bytes"),
    ({"page_bytes": 2048}, "page_bytes"),
    ({"page_bytes": 0}, "page_bytes"),
    ({"eviction_policy": "mru"}, "eviction_policy"),
    ({"disk_admission": "sometimes"}, "disk_admission"),
    ({"gpu_device": "tpu"}, "gpu_device"),
    ({"max_chunk_bytes": (1 << 30) + 1}, "max_chunk_bytes"),
    ({"cpu_capacity_bytes": 1 << 20, "max_chunk_bytes": 2 << 20}, "max_chunk_bytes"),
    ({"max_chunk_bytes": 0}, "max_chunk_bytes"),
    ({"cpu_capacity_bytes": 1024, "page_bytes": 4096}, "cpu_capacity_bytes"),
    ({"frame_bytes": 1024}, "frame_bytes"),
    ({"frame_bytes": 4 << 20}, "frame_bytes"),
    ({"prefetch_workers": 0}, "prefetch_workers"),
    ({"data_dir": ""}, "data_dir"),
])
def test_bad_values_raise_naming_the_setting(values, setting):
    with pytest.raises(ConfigError, match=setting):
        NodeConfig(**values)
    with pytest.raises(ConfigError, match=setting):  # the same through the loader
        load_config(env={}, overrides=values)


@pytest.mark.parametrize("env,setting", [
    ({"KVSTORE_PORT": "http"}, "port"),
    ({"KVSTORE_PORT": "1.5"}, "port"),
    ({"KVSTORE_FSYNC": "maybe"}, "fsync"),
    ({"KVSTORE_DATA_PLANE": ""}, "data_plane"),
    ({"KVSTORE_CPU_CAPACITY_BYTES": "lots"}, "cpu_capacity_bytes"),
    ({"KVSTORE_CPU_CAPACITY_BYTES": "-64MiB"}, "cpu_capacity_bytes"),
    ({"KVSTORE_PAGE_BYTES": "5000"}, "page_bytes"),
    ({"KVSTORE_EVICTION_POLICY": "random"}, "eviction_policy"),
    ({"KVSTORE_MODELS": '[{"model_id": "m"}]'}, "models"),
    ({"KVSTORE_MODELS": '{"model_id": "m", "kv_dtype": "f"}'}, "models"),
    ({"KVSTORE_MODELS": "m:float16"}, "models"),
])
def test_bad_environment_values_name_setting_and_source(env, setting):
    with pytest.raises(ConfigError, match=setting) as exc:
        load_config(env=env)
    key = next(iter(env))
    if "=" not in str(exc.value):  # coercion errors also say where the value came from
        assert key in str(exc.value)


@pytest.mark.parametrize("text,setting", [
    ("fsync: maybe\n", "fsync"),
    ("data_plane: 1\n", "data_plane"),
    ("port: 50051.5\n", "port"),
    ("port: true\n", "port"),
    ("host: 127\n", "host"),
    ("cpu_capacity_bytes: 1.5\n", "cpu_capacity_bytes"),
    ("models: m\n", "models"),
])
def test_bad_file_values_name_setting_and_file(tmp_path, text, setting):
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(ConfigError, match=setting) as exc:
        load_config(path, env={})
    assert str(path) in str(exc.value)


def test_unknown_key_in_file_is_an_error(tmp_path):
    path = write(tmp_path, "typo.yaml", "cpu_capacity: 1GiB\n")
    with pytest.raises(ConfigError, match="unknown setting 'cpu_capacity'"):
        load_config(path, env={})


def test_unknown_override_is_an_error():
    with pytest.raises(ConfigError, match="unknown setting 'gpu_bytes'"):
        load_config(env={}, overrides={"gpu_bytes": 1})


def test_unknown_environment_variables_are_ignored():
    # other KVSTORE_* variables (e.g. of the router) are not this node's settings
    assert load_config(env={"KVSTORE_ROUTER_PORT": "1"}) == NodeConfig()


@pytest.mark.parametrize("text", ["port: [1, 2\n", "- port\n- 1\n", "just a string\n"])
def test_unreadable_or_non_mapping_file(tmp_path, text):
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(write(tmp_path, "bad.yaml", text), env={})


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml", env={})


def test_resolved_node_id():
    assert NodeConfig(port=7000, data_port=7001).resolved_node_id == "127.0.0.1:7000"
    assert NodeConfig(node_id="n1").resolved_node_id == "n1"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.12", "::1", "localhost"])
def test_loopback_hosts_need_no_security(host):
    assert NodeConfig(host=host).insecure is False  # the embedded local default


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.7", "::", "kvstore-0.kvstore-headless"])
def test_reachable_hosts_need_tls_and_tokens_or_an_explicit_insecure(host):
    with pytest.raises(ConfigError, match=r"host=.*tls_cert and auth_tokens_file are not set"):
        NodeConfig(host=host)
    with pytest.raises(ConfigError, match=r"auth_tokens_file is not set"):
        NodeConfig(host=host, tls_cert="/c.pem", tls_key="/k.pem")
    with pytest.raises(ConfigError, match=r"tls_cert is not set"):
        NodeConfig(host=host, auth_tokens_file="/tokens.yaml")
    secured = NodeConfig(host=host, tls_cert="/c.pem", tls_key="/k.pem",
                         auth_tokens_file="/tokens.yaml")
    assert secured.host == host and not secured.insecure
    assert NodeConfig(host=host, insecure=True).insecure  # said explicitly: allowed
    assert load_config(env={"KVSTORE_HOST": host, "KVSTORE_INSECURE": "true"}).insecure
