"""Starting several jaxmlp processes at once (a multi-process run on 127.0.0.1) from a test.

Each process gets one CPU device (``worker_env``); ``run_together`` waits for all of them and, on a
failure or past its timeout, kills the rest: a process left alone would wait for its peer in a
collective forever.
"""
from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a coordinator)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(**extra: str) -> dict:
    """The test's environment for a child on the CPU backend: no forced devices or x64 unless ``extra``
    sets them, the checkout importable."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_ENABLE_X64")}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), **extra)
    return env


def run_together(commands: list[list[str]], folder: Path, *, timeout_s: float, env: dict | None = None,
                 ok: tuple[int, ...] = (0,)) -> list[tuple[int, str, str]]:
    """Start every command at once in ``folder``'s logs, wait for all; stop waiting when one exits
    with a code outside ``ok`` or past ``timeout_s``, killing the others. Returns each one's
    (return code, stdout, stderr); asserts, with their logs, that every code is in ``ok``."""
    files = [(open(folder / f"out{i}.txt", "w+"), open(folder / f"err{i}.txt", "w+")) for i in range(len(commands))]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env or worker_env(), stdout=out, stderr=err)
             for cmd, (out, err) in zip(commands, files)]
    deadline = time.monotonic() + timeout_s
    try:
        while any(p.poll() is None for p in procs):
            if time.monotonic() > deadline or any(p.poll() not in (None, *ok) for p in procs):
                break
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    results = []
    for p, (out, err) in zip(procs, files):
        out.seek(0), err.seek(0)
        results.append((p.returncode, out.read(), err.read()))
        out.close(), err.close()
    failed = [f"--- process {i} (rc {rc}):\n{err[-3000:]}" for i, (rc, _, err) in enumerate(results) if rc not in ok]
    assert not failed, f"processes failed or timed out after {timeout_s} s:\n" + "\n".join(failed)
    return results
