"""Start and stop the real processes kvstore runs beside itself: store nodes and redis-server.

Used by benchmarks, the demo and integration tests; each process is waited for until it accepts
connections, and stopped with SIGTERM then SIGKILL.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout_s: float, what: str,
             interval_s: float = 0.05, error: type[Exception] = TimeoutError) -> T:
    """Poll ``predicate`` until it returns something truthy (returned); raise ``error`` naming
    ``what`` at the deadline. Polling with a deadline, never a bare sleep (tests, chaos, CLI)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise error(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def run_client_processes(target: Callable[..., None], case: object, clients: int,
                         timeout_s: float = 600.0) -> list:
    """Run ``target(case, rank, barrier, out)`` in ``clients`` spawned processes that start
    together at ``barrier`` and each put one result on ``out``; the results (in arrival order).
    Benchmarks use processes, not threads: one Python client per core, as workers would."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(clients), ctx.Queue()
    workers = [ctx.Process(target=target, args=(case, r, barrier, out)) for r in range(clients)]
    for w in workers:
        w.start()
    results = [out.get(timeout=timeout_s) for _ in workers]
    for w in workers:
        w.join()
    return results


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, timeout_s: float, proc: subprocess.Popen | None = None
              ) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with code {proc.returncode} before listening "
                               f"on {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout_s} s")


@dataclass
class Proc:
    proc: subprocess.Popen
    host: str
    port: int
    data_port: int = 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """kill -9: no shutdown code runs (crash simulation)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start_node(data_dir: str, extra: Sequence[str] = (), host: str = "127.0.0.1",
               port: int = 0, data_port: int = 0, timeout_s: float = 60.0,
               log_path: str | None = None) -> Proc:
    """A `kvstore serve` subprocess on free ports (or the given ones)."""
    port = port or free_port(host)
    data_port = data_port or free_port(host)
    cmd = [sys.executable, "-m", "kvstore.cli.main", "serve", "--host", host, "--port", str(port),
           "--data-port", str(data_port), "--data-dir", data_dir, *extra]
    if not any(a.startswith("--metrics-port") for a in extra):
        cmd += ["--metrics-port", "0"]  # several nodes per host: the default 9464 would clash
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVSTORE_")}
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    p = Proc(proc, host, port, data_port)
    try:
        wait_port(host, port, timeout_s, proc)
        wait_port(host, data_port, timeout_s, proc)
    except BaseException:
        p.kill()
        raise
    return p


def start_redis(port: int = 0, host: str = "127.0.0.1", timeout_s: float = 20.0) -> Proc:
    exe = shutil.which("redis-server")
    if exe is None:
        raise FileNotFoundError("redis-server not found: `apt-get install -y redis-server` "
                                "(scripts/setup.sh does this)")
    port = port or free_port(host)
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", host, "--save", "",
                             "--appendonly", "no", "--protected-mode", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    p = Proc(proc, host, port)
    try:
        wait_port(host, port, timeout_s, proc)
    except BaseException:
        p.kill()
        raise
    return p
