"""Security settings: off in the embedded local default (and working there with no settings at
all); bad combinations and bad files refused with a ConfigError naming the setting."""

from __future__ import annotations

import json

import pytest

from kvstore.config import NodeConfig, load_config
from kvstore.errors import ConfigError
from kvstore.keys import prefix_keys
from kvstore.server.auth import parse_tokens, token_hash
from kvstore_client.security import ClientSecurity

from .conftest import scheme_of

SECURITY_FIELDS = ("tls_cert", "tls_key", "tls_client_ca", "tls_ca", "auth_tokens_file",
                   "peer_token_file")


def test_embedded_default_has_security_off_and_works_without_settings(start_node, connect,
                                                                       payload):
    default = NodeConfig()
    assert all(getattr(default, f) == "" for f in SECURITY_FIELDS) and default.tenants == {}
    assert default.host == "127.0.0.1"  # off only where nobody else can reach it
    node = start_node()
    assert node.core.auth is None
    c = connect(node.address, scheme_of(""), security=ClientSecurity.from_env({}))
    key = prefix_keys(scheme_of(""), list(range(256)))[0]
    data = payload(4096, "default")
    assert c.put(key, data) and bytes(c.get_bytes_many([key])[0]) == data
    assert c.stats().puts == 1  # no token, no admin role needed
    assert node.core.manager.tenant_usage() == {"": 4096}


@pytest.mark.parametrize("settings, error", [
    (dict(tls_cert="c.pem"), "tls_cert and tls_key go together"),
    (dict(tls_key="k.pem"), "tls_cert and tls_key go together"),
    (dict(tls_client_ca="ca.pem"), "mutual TLS needs the node's own tls_cert"),
    (dict(shared_memory=True, auth_tokens_file="t.yaml"), "/dev/shm"),
    (dict(tenants={"a": {"quota": 1}}), r"unknown key\(s\) \['quota'\]"),
    (dict(tenants={"a": {"quota_bytes": "lots"}}), "quota_bytes"),
    (dict(tenants={"a": {"quota_bytes": -1}}), "must be >= 0"),
    (dict(tenants={"a": {"share_with": "b"}}), "list of tenant names"),
    (dict(tenants={"": {}}), "non-empty"),
    (dict(tenants=["a"]), "expected a mapping"),
])
def test_bad_security_settings_are_refused(settings, error):
    with pytest.raises(ConfigError, match=error):
        NodeConfig(**settings)


def test_tenants_from_a_file_and_the_environment(tmp_path):
    f = tmp_path / "node.yaml"
    f.write_text("tenants:\n  alice: {quota_bytes: 1GiB, share_with: [carol]}\n  bob: {}\n")
    cfg = load_config(f, env={})
    assert cfg.tenants == {"alice": {"quota_bytes": 1 << 30, "share_with": ("carol",)},
                           "bob": {"quota_bytes": None, "share_with": ()}}
    env = {"KVSTORE_TENANTS": json.dumps({"x": {"quota_bytes": "1MiB"}})}
    assert load_config(env=env).tenants["x"]["quota_bytes"] == 1 << 20


def test_unreadable_security_files_stop_the_node_naming_the_setting(start_node, node_config,
                                                                    tmp_path):
    with pytest.raises(ConfigError, match="tls_(cert|key)=.*cannot read it"):
        start_node(node_config(tls_cert=str(tmp_path / "missing.pem"),
                               tls_key=str(tmp_path / "missing.key")))
    with pytest.raises(ConfigError, match="auth_tokens_file="):
        start_node(node_config(auth_tokens_file=str(tmp_path / "missing.yaml")))


@pytest.mark.parametrize("doc, error", [
    ({"tokens": [{"token": "plain"}]}, "unknown key"),
    ({"tokens": [{"sha256": "ab", "tenant": "a"}]}, "64 hex digits"),
    ({"tokens": [{"sha256": "a" * 64, "tenant": ""}]}, "tenant must be"),
    ({"tokens": [{"sha256": "a" * 64, "tenant": "a", "role": "root"}]}, "role must be"),
    ({"tokens": [{"sha256": "a" * 64, "tenant": "a"}] * 2}, "listed twice"),
    ({"users": []}, "'tokens' list"),
])
def test_bad_tokens_files_are_refused(doc, error):
    with pytest.raises(ConfigError, match=error):
        parse_tokens(doc, "t.yaml")


def test_tokens_file_holds_hashes_that_map_to_tenant_and_role():
    table = parse_tokens({"tokens": [{"sha256": token_hash("s3cret"), "tenant": "a",
                                      "role": "admin"}]}, "t.yaml")
    (principal,) = table.values()
    assert principal.tenant == "a" and principal.is_admin and "s3cret" not in repr(table)
