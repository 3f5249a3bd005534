"""Helpers of the vLLM tests: prompts, waiting for saves, and the engine processes
(kvstore_client.vllm.runner.EngineProcess: one fresh vLLM process each; tests share them per
role, since starting one takes ~30 s here)."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path
from typing import Any

from kvstore.procs import wait_for
from kvstore_client.vllm.runner import EngineProcess, engine_env, kv_transfer_config

__all__ = ["EngineProcess", "engine_env", "kv_transfer_config"]

SAVER_BUDGET = 160  # the saver's tokens per step: 256-token chunks complete inside a step
NAMES = ["Alice", "Bruno", "Chen", "Dana", "Emeka", "Farah", "Goran", "Hana", "Ivan", "Jun"]
CITIES = ["Lisbon", "Osaka", "Nairobi", "Lima", "Oslo", "Hanoi", "Quito", "Tunis", "Perth", "Riga"]
JOBS = ["baker", "pilot", "nurse", "welder", "teacher", "chemist", "farmer", "judge", "tailor"]


def text(seed: int, sentences: int) -> str:
    """Plain English facts (names, cities, jobs) ending in a question about the first one, so
    the greedy answer depends on the prompt's early tokens."""
    rng = random.Random(seed)
    facts = [f"{rng.choice(NAMES)} {rng.randrange(1000)} lives in {rng.choice(CITIES)} and "
             f"works as a {rng.choice(JOBS)}." for _ in range(sentences)]
    first = facts[0].split(" lives")[0]
    return f"Record {seed}. " + " ".join(facts) + f" Question: where does {first} live? Answer:"


class Prompts:
    """Token-id prompts of (at least) a given length, each distinct (seeded)."""

    def __init__(self, model: Path) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(model))
        self._seed = 0

    def make(self, n_tokens: int) -> list[int]:
        """A fresh prompt of exactly ``n_tokens`` tokens (its question at the end)."""
        self._seed += 1
        sentences = 4
        while True:
            ids = self.tokenizer.encode(text(self._seed, sentences))
            if len(ids) >= n_tokens:
                return ids[len(ids) - n_tokens:]  # cut from the front: keep the question
            sentences *= 2


def wait_saved(store: Any, keys: list[bytes], timeout_s: float = 60.0) -> None:
    """Poll the store until it holds every key (saves land asynchronously)."""
    wait_for(lambda: all(store.lookup(keys).found), timeout_s, f"{len(keys)} chunks saved")


def make_pki(d: Path) -> dict[str, str]:
    """A test CA and a node certificate it signed, for 127.0.0.1 (openssl)."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=30)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
            "-subj", "/CN=test-ca", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    (d / "node.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                                "extendedKeyUsage=serverAuth\n")
    openssl("req", *ec, "-keyout", "node.key", "-out", "node.csr", "-subj", "/CN=node")
    openssl("x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "node.pem", "-days", "1", "-extfile", "node.ext")
    return {"ca": str(d / "ca.pem"), "cert": str(d / "node.pem"), "key": str(d / "node.key")}
