"""Downloading a known dataset from its mirrors: each file streamed to a temp name, verified against the
registry's SHA-256, then renamed into place in one step, so a file appears under its own name only whole
and verified, and no temp file outlives the process that wrote it (a later download removes those of a
process that died)."""
from __future__ import annotations

import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from ..fileio import remove_stale_temps, temp_path
from ..progress import Progress
from .errors import DownloadError
from .locate import cache_root, resolve_data_dir
from .registry import RemoteFile, dataset_info, title
from .verify import cached_digests, compute_digests, identify, mismatch, remember, verified


class _MirrorFailed(Exception):
    """One mirror's failure for one file; str() is the reason shown to the user."""


def _fetch(url: str, out, timeout: float, bar_enabled: bool, desc: str) -> None:
    """Stream url into the open binary file out; _MirrorFailed with a short reason on any failure."""
    got = 0
    total = None
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "jaxmlp"})
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            scale, unit = (1e6, "MB") if (total or 0) >= 1e6 else (1e3, "kB")
            with Progress((total or 0) / scale, desc, enabled=bar_enabled, unit=unit) as bar:
                while True:
                    chunk = resp.read(1 << 16)
                    if not chunk:
                        break
                    out.write(chunk)
                    got += len(chunk)
                    bar.update(len(chunk) / scale)
    except urllib.error.HTTPError as err:
        err.close()
        raise _MirrorFailed(f"HTTP {err.code}") from None
    except http.client.IncompleteRead:
        raise _MirrorFailed(f"connection closed after {got} of {total} bytes") from None
    except TimeoutError:
        raise _MirrorFailed(f"timed out after {timeout:g} s ({got} bytes received)") from None
    except urllib.error.URLError as err:
        reason = err.reason
        text = getattr(reason, "strerror", None) or str(reason)
        raise _MirrorFailed(text) from None
    except (http.client.HTTPException, OSError) as err:
        text = getattr(err, "strerror", None) or str(err) or type(err).__name__
        raise _MirrorFailed(f"{text} after {got} bytes") from None
    except ValueError as err:  # malformed URL
        raise _MirrorFailed(str(err)) from None
    # urllib does not complain when the server closes before Content-Length bytes: check ourselves.
    if total is not None and got != total:
        raise _MirrorFailed(f"connection closed after {got} of {total} bytes")


def _check_mirror(base: str) -> str:
    base = str(base).strip().rstrip("/")
    scheme = base.partition(":")[0].lower()
    if scheme not in ("http", "https", "file") or "://" not in base:
        raise DownloadError(f"download: mirrors {base!r}: expected an http://, https:// or file:// base URL")
    return base


def _fetch_verified(spec: RemoteFile, dest: Path, bases: Sequence[str], timeout: float,
                    progress: bool) -> None:
    """Fetch spec into dest from the first mirror whose copy verifies; DownloadError naming each failure.

    The bytes go to a temp name beside dest (``.NAME.PID.RANDOM.part``, fileio's naming, so a later
    download removes it if this process dies) that is removed on any exception, KeyboardInterrupt and
    SystemExit (e.g. SIGTERM turned into one) included.
    """
    failures = []
    for base in bases:
        tmp = temp_path(dest, "part")
        try:
            with open(tmp, "xb") as out:  # "xb": the user's umask (unlike mkstemp's 0600), never clobbers
                _fetch(f"{base}/{spec.name}", out, timeout, progress, spec.name)
            found = compute_digests(tmp)
            reason = mismatch(found, spec)
            if reason is not None:
                raise _MirrorFailed(reason)
            os.replace(tmp, dest)
            remember(dest, found)
            return
        except _MirrorFailed as err:
            failures.append(f"{base}: {err}")
        finally:
            tmp.unlink(missing_ok=True)
    raise DownloadError(f"could not download {spec.name}: {'; '.join(failures)}")


def download(dataset: str = "mnist", data_dir: str | os.PathLike | None = None,
             mirrors: Sequence[str] | None = None, progress: bool = False,
             timeout: float = 30.0) -> Path:
    """Download and verify the four files of ``dataset`` into a folder.

    Args:
        dataset: a registry name ("mnist", "fashion-mnist", "kmnist").
        data_dir: the folder; None: as resolve_data_dir finds it ($JAXMLP_DATA_DIR, else the cache).
        mirrors: base URLs that replace the built-in list; each file is tried on each mirror in order.
        progress: draw a bar on a terminal's stderr.
        timeout: the most seconds to wait for each mirror's answer.

    Returns:
        The folder.

    Files already present and verified are kept. A file appears under its own name only once its
    checksum is verified; temporary files are removed whatever fails, and those of dead earlier
    downloads are removed first. A folder holding another registered dataset's files is refused rather
    than overwritten. DownloadError (one line, naming every mirror and its failure) when no mirror
    yields a verified copy of some file.
    """
    info = dataset_info(dataset)
    if isinstance(mirrors, (str, os.PathLike)):
        mirrors = [mirrors]
    bases = [_check_mirror(m) for m in mirrors] if mirrors else list(info.mirrors)
    folder = resolve_data_dir(data_dir, dataset)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DownloadError(f"cannot create data folder {folder}: {err.strerror or err}") from None
    remove_stale_temps(folder)
    for spec in info.files:
        dest = folder / spec.name
        raw = folder / spec.name.removesuffix(".gz")
        if verified(dest, spec) or (spec.content_sha256 is not None and verified(raw, spec)):
            continue
        ours = folder == cache_root() / dataset  # the cache is ours to overwrite; a user's folder is not
        other = identify(cached_digests([dest])[0], raw.name, dataset) if dest.is_file() and not ours else None
        if other is not None:
            raise DownloadError(f"{folder} holds {title(other)}'s files; download {title(dataset)} into "
                                f"another folder (--data-dir DIR, or a {dataset}/ subfolder of "
                                f"$JAXMLP_DATA_DIR) instead of overwriting them")
        _fetch_verified(spec, dest, bases, timeout, progress)
    return folder
