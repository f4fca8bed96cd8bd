"""Files the project writes: one atomic-write rule for all of them, and cleaning up after crashes.

Every file jaxmlp writes (checkpoints, metrics JSON, bench reports, downloads, plots) goes through
:func:`atomic_write`: the bytes go to a temporary file next to the target, named
``.NAME.PID.RANDOM.tmp``, which is fsynced and renamed over the target in one step. A crash or an
error mid-write leaves the previous file intact. The PID in the name lets a later write into the same
folder remove temporaries whose writer is gone (:func:`remove_stale_temps`) without touching one that a
live process is still writing.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.(?:tmp|part)$")


def temp_path(path: Path, suffix: str = "tmp") -> Path:
    """A fresh temporary name beside ``path``.

    Args:
        path: the file the temporary stands in for.
        suffix: the name's ending.

    Returns:
        ``.NAME.PID.RANDOM.SUFFIX`` in ``path``'s folder.
    """
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.{suffix}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # gone, or a number no process can have
        return False
    except OSError:  # alive but not ours (EPERM)
        return True
    return True


def remove_stale_temps(folder: Path, name: str | None = None) -> list[Path]:
    """Delete our temporaries in ``folder`` whose writing process is gone. Files that do not match our
    naming pattern are never touched.

    Args:
        folder: the folder to clean.
        name: only the temporaries of this target file; None: any.

    Returns:
        The paths removed.
    """
    removed: list[Path] = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP.match(entry.name)
        if m is None or (name is not None and m["name"] != name) or _pid_alive(int(m["pid"])):
            continue
        with contextlib.suppress(OSError):
            entry.unlink()
            removed.append(entry)
    return removed


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable; not every OS or file system lets a directory be opened.

    Args:
        folder: the folder of the renamed file.
    """
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", suffix: str = "tmp") -> Iterator[IO]:
    """``with atomic_open(path) as f: ...`` writes ``path`` all at once or not at all.

    The folder is created if needed; a folder at ``path`` is refused (IsADirectoryError) before
    anything is written; stale temporaries of earlier crashed writers of ``path`` are removed. The
    file is opened in ``mode`` under a temporary name ending in ``suffix`` (see :func:`temp_path`), and
    keeps the permissions of the one it replaces (0644 for a new file).

    Args:
        path: the file to write.
        mode: "wb" or "w".
        suffix: the temporary name's ending.

    Yields:
        The open temporary file; it takes ``path``'s name when the block ends without an error.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder, not a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, path.name)
    tmp = temp_path(path, suffix)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        try:
            mode_bits = path.stat().st_mode & 0o777
        except FileNotFoundError:
            mode_bits = 0o644
        os.chmod(tmp, mode_bits)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], mode: str = "wb") -> Path:
    """Call ``write(f)`` on a temporary file and rename it over ``path`` (see :func:`atomic_open`).

    Args:
        path: the file to write.
        write: called with the open temporary file.
        mode: "wb" or "w".

    Returns:
        ``path``, as a ``Path``.
    """
    with atomic_open(path, mode) as f:
        write(f)
    return Path(path)


def write_json(path: str | os.PathLike, obj) -> Path:
    """Atomically write ``obj`` to ``path`` as indented JSON plus a newline.

    Args:
        path: the file to write.
        obj: a JSON-serialisable value.

    Returns:
        ``path``, as a ``Path``.
    """
    def dump(f):
        json.dump(obj, f, indent=2)
        f.write("\n")

    return atomic_write(path, dump, mode="w")


def check_writable(path: str | os.PathLike, what: str, *, folder: bool = False) -> None:
    """ValueError naming ``what`` unless ``path`` can be written as a file (or a folder).

    Checked before any work: the parent folder exists or can be made, is a folder, and is writable
    (a file is created in it, or in its nearest existing ancestor, and removed again); the path itself
    is not a folder (for a file) or not a file (for a folder).

    Args:
        path: the file or folder to be written.
        what: the argument's name (a flag), named in the error.
        folder: ``path`` is to be a folder.
    """
    path = Path(path)
    if folder:
        if path.exists() and not path.is_dir():
            raise ValueError(f"{what}: {path} is a file, not a folder")
        target = path
    else:
        if path.is_dir():
            raise ValueError(f"{what}: {path} is a folder; give a file name inside it")
        target = path.parent
    probe = target
    while not probe.exists():  # the nearest existing ancestor decides whether we may create it
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{what}: {probe} is a file, so {path} cannot be created")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{what}: {probe} is not writable")
    _try_create(probe, what)


def _try_create(folder: Path, what: str) -> None:
    """Create and remove a file in ``folder``: ``os.access`` reads permission bits, which root passes even
    where nothing can be created (/proc, a read-only mount). The name is one of our temporaries, so one
    left by a crash between the two steps is removed by ``remove_stale_temps(folder)``."""
    trial = temp_path(folder / "jaxmlp-write-check")
    try:
        trial.open("xb").close()
    except OSError as err:
        raise ValueError(f"{what}: cannot create files in {folder} ({err.strerror or err})") from None
    with contextlib.suppress(OSError):
        trial.unlink()
