"""Tests for jaxmlp.fileio: a write lands whole or not at all (errors, Ctrl-C, kill -9), temporaries of
dead writers are cleaned by the next write while a live writer's are kept, and check_writable refuses
paths that cannot be written before any work starts."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from jaxmlp import fileio
from jaxmlp.fileio import atomic_open, atomic_write, check_writable, remove_stale_temps, temp_path, write_json


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def fake_temp(target, pid: int):
    tmp = target.with_name(f".{target.name}.{pid}.deadbeef.tmp")
    tmp.write_bytes(b"half")
    return tmp


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_error_mid_write_keeps_old_file_and_no_temp(tmp_path, error):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(type(error)):
        with atomic_open(target) as f:
            f.write(b"new, half written")
            raise error
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]


def test_write_creates_folders_keeps_mode_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a" / "b" / "f.json"
    assert write_json(target, {"x": [1, 2]}) == target
    assert json.loads(target.read_text()) == {"x": [1, 2]} and target.read_text().endswith("\n")
    assert target.stat().st_mode & 0o777 == 0o644
    target.chmod(0o600)
    atomic_write(target, lambda f: f.write(b"binary"))
    assert target.read_bytes() == b"binary" and target.stat().st_mode & 0o777 == 0o600
    assert os.listdir(target.parent) == ["f.json"]


def test_folder_target_refused_before_writing(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError):
        with atomic_open(tmp_path / "d") as f:
            f.write(b"x")
    assert os.listdir(tmp_path / "d") == []


def test_kill_9_mid_write_keeps_old_file_and_next_write_cleans_up(tmp_path):
    """A writer killed with SIGKILL mid-write leaves the old file whole; its temp is removed next time."""
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    # Load fileio by path: importing the package would pull in jax for nothing.
    script = (
        "import importlib.util, sys, time\n"
        f"spec = importlib.util.spec_from_file_location('fileio', {fileio.__file__!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        f"with m.atomic_open({str(target)!r}) as f:\n"
        "    f.write(b'new, half written'); f.flush(); print('ready', flush=True); time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"ready\n"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    temps = [p for p in tmp_path.iterdir() if p.name.startswith(f".f.bin.{child.pid}.")]
    assert len(temps) == 1 and target.read_bytes() == b"old"
    atomic_write(target, lambda f: f.write(b"new"))
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["f.bin"]


def test_stale_temps_of_dead_pids_removed_live_ones_kept(tmp_path):
    target = tmp_path / "f.bin"
    dead = fake_temp(target, dead_pid())
    absurd = fake_temp(target, 10**20)  # no process can have it (and os.kill would overflow)
    live_child = subprocess.Popen(["sleep", "60"])
    try:
        live = fake_temp(target, live_child.pid)
        mine = temp_path(target)
        mine.write_bytes(b"in progress")
        foreign = [tmp_path / n for n in (".f.bin.123.tmp", "f.bin.1.deadbeef.tmp", ".other.1.deadbeef.tmpx")]
        for p in foreign:
            p.write_bytes(b"not ours")
        atomic_write(target, lambda f: f.write(b"new"))
        assert not dead.exists() and not absurd.exists()
        assert live.exists() and mine.exists() and all(p.exists() for p in foreign)
    finally:
        live_child.kill()
        live_child.wait()
    assert remove_stale_temps(tmp_path) == [live]  # gone now; "mine" is this live process's


def test_stale_temps_of_other_targets_only_removed_when_asked(tmp_path):
    """A write cleans its own target's temporaries; remove_stale_temps(folder) cleans every target's."""
    other = fake_temp(tmp_path / "g.bin", dead_pid())
    atomic_write(tmp_path / "f.bin", lambda f: f.write(b"x"))
    assert other.exists()
    assert remove_stale_temps(tmp_path) == [other] and not other.exists()
    assert remove_stale_temps(tmp_path / "missing") == []


def test_check_writable(tmp_path):
    """Folders given as files, files given as folders, and paths under a file are refused by flag name."""
    check_writable(tmp_path / "new" / "deeper" / "f.npz", "--save")
    check_writable(tmp_path / "new" / "dir", "--out", folder=True)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match=r"--save: .* is a folder"):
        check_writable(tmp_path, "--save")
    with pytest.raises(ValueError, match=r"--out: .* is a file, not a folder"):
        check_writable(a_file, "--out", folder=True)
    for under in (a_file / "f.npz", a_file / "sub" / "f.npz"):
        with pytest.raises(ValueError, match=r"--save: .*file\b.* is a file, so .* cannot be created"):
            check_writable(under, "--save")
    with pytest.raises(ValueError, match="--out: .* is a file"):
        check_writable(a_file / "sub", "--out", folder=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permissions")
def test_check_writable_refuses_a_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(ValueError, match="--save: .* is not writable"):
            check_writable(folder / "f.npz", "--save")
    finally:
        folder.chmod(0o700)
