"""Tests for jaxmlp.data.download and `jaxmlp download`, against mirrors served on 127.0.0.1.

The test server serves the shared MNIST copy through several kinds of mirror (good, re-compressed,
404, corrupted, tampered, dying mid-transfer, stalling). No outside host is ever contacted.
"""
import gzip
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from jaxmlp import cli, data
from jaxmlp.data import fetch, locate

LABELS = ("train-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
FASHION = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist, if installed

# Everything here serves the real MNIST files: conftest's mnist_dir ($JAXMLP_DATA_DIR, else
# ../shared/data/mnist from the repo root) skips when they are absent, or fails under CI's
# JAXMLP_REQUIRE_DATA=1.
pytestmark = pytest.mark.realdata


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Hash stamps of the folders downloaded into go to a throwaway cache, never to the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))


@pytest.fixture(scope="module")
def shared(mnist_dir):
    if not all((mnist_dir / n).is_file() for n in LABELS):
        pytest.skip(f"{mnist_dir} lacks the gzip label files")
    return mnist_dir


def _flip(raw: bytes) -> bytes:
    """Same length, a few bytes inverted in the middle of the deflate stream."""
    mid = len(raw) // 2
    return raw[:mid] + bytes(b ^ 0xFF for b in raw[mid:mid + 4]) + raw[mid + 4:]


def _tamper(raw: bytes) -> bytes:
    """A valid gzip whose contents differ in one pixel/label byte: only the checksum can tell."""
    contents = bytearray(gzip.decompress(raw))
    contents[-1] ^= 0x01
    return gzip.compress(bytes(contents), mtime=0)


class _Handler(BaseHTTPRequestHandler):
    """GET /<kind>/<file name>, where kind picks the mirror's behaviour."""

    def do_GET(self):
        kind, _, name = self.path.strip("/").partition("/")
        self.server.requests.append(self.path)
        path = self.server.shared / name
        if kind == "404" or not path.is_file():
            self.send_error(404)
            return
        raw = self.server.cache.get(name) or self.server.cache.setdefault(name, path.read_bytes())
        if kind == "stall":
            self.server.release.wait(10)
            return
        make = {"good": lambda r: r, "truncated": lambda r: r, "flipped": _flip, "tampered": _tamper,
                "recompressed": lambda r: gzip.compress(gzip.decompress(r), compresslevel=1, mtime=0)}
        body = make[kind](raw)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if kind == "truncated":
            # Promise the whole file, send a third, hang up.
            try:
                self.wfile.write(body[:len(body) // 3])
                self.wfile.flush()
            except ConnectionError:  # the client may already have given up on us
                pass
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture(scope="module")
def server(shared):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.shared = shared
    srv.requests, srv.cache, srv.release = [], {}, threading.Event()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    srv.url = lambda kind: f"{base}/{kind}"
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def labels_only(monkeypatch):
    """A registry entry with only MNIST's two label files (60 KB), to keep most tests fast."""
    mnist = data.DATASETS["mnist"]
    info = mnist._replace(name="mnist-labels", files=tuple(f for f in mnist.files if f.name in LABELS))
    monkeypatch.setitem(data.DATASETS, "mnist-labels", info)
    return "mnist-labels"


def _contents_sha256(path: Path) -> str:
    return hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest()


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_bad_mirrors_first_still_succeeds_and_verifies(shared, server, labels_only, tmp_path):
    """With 404, corrupt, tampered and dying mirrors ahead of a good one, every file arrives,
    stored under its own name as downloaded, with the registry's checksum, and nothing else is left."""
    mirrors = [server.url(k) for k in ("404", "flipped", "tampered", "truncated", "good")]
    folder = data.download(labels_only, tmp_path / "d", mirrors=mirrors)
    assert folder == tmp_path / "d"
    assert _names(folder) == sorted(LABELS)
    for spec in data.DATASETS[labels_only].files:
        assert (folder / spec.name).read_bytes() == (shared / spec.name).read_bytes()
        assert _contents_sha256(folder / spec.name) == spec.content_sha256


def test_recompressed_copy_is_accepted(shared, server, labels_only, tmp_path):
    """Mirrors may re-compress: a copy with different .gz bytes but the same contents is verified."""
    data.download(labels_only, tmp_path, mirrors=[server.url("recompressed")])
    for name in LABELS:
        assert (tmp_path / name).read_bytes() != (shared / name).read_bytes()
        assert data.read_idx(tmp_path / name).tobytes() == data.read_idx(shared / name).tobytes()


def test_all_bad_mirrors_give_one_line_naming_each(shared, server, labels_only, tmp_path):
    """When every mirror fails, DownloadError is one line naming each mirror with its own failure,
    and no file (partial, temporary or unverified) is left behind."""
    kinds = ("404", "flipped", "tampered", "truncated")
    with pytest.raises(data.DownloadError) as info:
        data.download(labels_only, tmp_path, mirrors=[server.url(k) for k in kinds])
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("could not download train-labels-idx1-ubyte.gz: ")
    parts = msg.split(": ", 1)[1].split("; ")
    assert [p.split(": ")[0] for p in parts] == [server.url(k) for k in kinds]
    assert parts[0].endswith("HTTP 404")
    assert parts[1].endswith("corrupt gzip data") or parts[1].endswith("checksum mismatch")
    assert parts[2].endswith("checksum mismatch")
    size = (shared / LABELS[0]).stat().st_size
    assert parts[3].endswith(f"connection closed after {size // 3} of {size} bytes")
    assert _names(tmp_path) == []
    assert isinstance(info.value, ValueError)


def test_stalled_mirror_times_out(server, labels_only, tmp_path):
    """A mirror that never answers is abandoned after `timeout` seconds and the next one is used."""
    data.download(labels_only, tmp_path, mirrors=[server.url("stall"), server.url("good")], timeout=0.3)
    assert _names(tmp_path) == sorted(LABELS)
    with pytest.raises(data.DownloadError, match=r"/stall: timed out after 0.3 s"):
        data.download(labels_only, tmp_path / "b", mirrors=[server.url("stall")], timeout=0.3)


def test_present_verified_files_are_kept_and_not_fetched(server, labels_only, tmp_path):
    """A second run makes no request and leaves verified files untouched; an existing good file
    survives a run in which every mirror fails for the other file."""
    data.download(labels_only, tmp_path, mirrors=[server.url("good")])
    before = {n: (tmp_path / n).stat().st_mtime_ns for n in LABELS}
    server.requests.clear()
    data.download(labels_only, tmp_path, mirrors=[server.url("404")])
    assert server.requests == []
    assert {n: (tmp_path / n).stat().st_mtime_ns for n in LABELS} == before

    (tmp_path / LABELS[1]).unlink()
    good = (tmp_path / LABELS[0]).read_bytes()
    with pytest.raises(data.DownloadError, match=f"could not download {LABELS[1]}"):
        data.download(labels_only, tmp_path, mirrors=[server.url("404"), server.url("truncated")])
    assert (tmp_path / LABELS[0]).read_bytes() == good
    assert _names(tmp_path) == [LABELS[0]]


def test_damaged_file_is_replaced_only_by_a_verified_copy(shared, server, labels_only, tmp_path):
    """A present file that fails verification stays as it was while mirrors fail, and is replaced
    once a mirror yields a verified copy."""
    name = LABELS[0]
    damaged = _tamper((shared / name).read_bytes())
    (tmp_path / name).write_bytes(damaged)
    with pytest.raises(data.DownloadError):
        data.download(labels_only, tmp_path, mirrors=[server.url("flipped")])
    assert (tmp_path / name).read_bytes() == damaged
    data.download(labels_only, tmp_path, mirrors=[server.url("good")])
    assert (tmp_path / name).read_bytes() == (shared / name).read_bytes()


def test_interrupt_mid_transfer_leaves_no_partial_file(server, labels_only, tmp_path, monkeypatch):
    """Ctrl-C during a transfer propagates and removes the temporary file."""
    class Interrupting(fetch.Progress):
        def update(self, n=1, postfix=None):
            raise KeyboardInterrupt
    monkeypatch.setattr(fetch, "Progress", Interrupting)  # the bar download draws
    with pytest.raises(KeyboardInterrupt):
        data.download(labels_only, tmp_path, mirrors=[server.url("good")])
    assert _names(tmp_path) == []


# A downloader in its own process that turns SIGTERM into SystemExit, as the CLI does.
_CHILD = """
import signal, sys
signal.signal(signal.SIGTERM, lambda *args: sys.exit(143))
from jaxmlp import data
data.download("mnist", sys.argv[1], mirrors=[sys.argv[2]], timeout=60)
"""


def _start_stalled_download(folder: Path, mirror: str) -> tuple[subprocess.Popen, Path]:
    """A child downloading from a mirror that never answers, and its .part file once it exists."""
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(folder), mirror],
                             cwd=Path(__file__).resolve().parents[1], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and child.poll() is None:
        parts = list(folder.glob(".*.part")) if folder.exists() else []
        if parts:
            return child, parts[0]
        time.sleep(0.05)
    child.kill()
    pytest.fail(f"no .part file appeared: {child.communicate()[1].decode()[-2000:]}")


def test_sigterm_mid_download_removes_the_part_file(server, tmp_path):
    """SIGTERM (turned into SystemExit) while a transfer is in flight: the process exits and its
    .part file (named .NAME.PID.RANDOM.part beside the target) is gone."""
    child, part = _start_stalled_download(tmp_path, server.url("stall"))
    assert part.name.startswith(f".train-images-idx3-ubyte.gz.{child.pid}.")
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=30) == 143
    assert _names(tmp_path) == [] and list(tmp_path.iterdir()) == []


def test_next_download_removes_dead_writers_part_files(server, labels_only, tmp_path):
    """A downloader killed outright (SIGKILL: no cleanup possible) leaves its .part file; the next
    download into that folder removes it, and leaves alone a .part of a live process."""
    child, part = _start_stalled_download(tmp_path, server.url("stall"))
    child.kill()
    child.wait(timeout=30)
    assert part.exists()
    live = tmp_path / f".t10k-labels-idx1-ubyte.gz.{os.getpid()}.0123abcd.part"
    live.write_bytes(b"in progress")
    data.download(labels_only, tmp_path, mirrors=[server.url("good")])
    assert not part.exists() and live.exists()
    assert _names(tmp_path) == sorted(LABELS + (live.name,))


def test_cli_download_success_and_failure(shared, server, tmp_path, capsys):
    """`jaxmlp download` prints the folder and exits 0; when all mirrors fail it prints exactly one
    line on stderr, no traceback, and exits non-zero. (The CLI's --dataset choices are the built-in
    names, so this fetches all of MNIST over loopback.)"""
    names = sorted(f.name for f in data.DATASETS["mnist"].files)
    if not all((shared / n).is_file() for n in names):
        pytest.skip("full MNIST set not available")
    rc = cli.main(["download", "--data-dir", str(tmp_path / "ok"),
                   "--mirror", server.url("404"), "--mirror", server.url("good"), "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 0 and out.strip() == str(tmp_path / "ok") and err == ""
    assert _names(tmp_path / "ok") == names

    rc = cli.main(["download", "--data-dir", str(tmp_path / "bad"),
                   "--mirror", server.url("404"), "--mirror", server.url("truncated")])
    out, err = capsys.readouterr()
    assert rc != 0 and out == ""
    assert err.count("\n") == 1 and err.startswith("jaxmlp: error: could not download ")
    assert server.url("404") in err and server.url("truncated") in err and "Traceback" not in err
    assert _names(tmp_path / "bad") == []


def test_ensure_dataset_downloads_full_set_into_cache(shared, server, tmp_path, monkeypatch):
    """With no flag and no $JAXMLP_DATA_DIR, ensure_dataset downloads all four MNIST files into
    $XDG_CACHE_HOME/jaxmlp/mnist (checksums verified, bad mirror skipped) and loads them; the result
    equals loading the shared copy directly."""
    if not all((shared / f.name).is_file() for f in data.DATASETS["mnist"].files):
        pytest.skip("full MNIST set not available")
    monkeypatch.delenv("JAXMLP_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    ds = data.ensure_dataset(None, mirrors=[server.url("truncated"), server.url("good")])
    cache = tmp_path / "cache" / "jaxmlp" / "mnist"
    # In its own cache jaxmlp keeps the files' hashes beside them.
    assert _names(cache) == sorted([f.name for f in data.DATASETS["mnist"].files] + [locate.STAMP])
    assert ds.x_train.shape == (60000, 28, 28) and ds.x_test.shape == (10000, 28, 28)
    for got, want in zip(ds, data.load_dataset(shared)):
        assert got.dtype == np.uint8 and np.array_equal(got, want)
    server.requests.clear()
    data.ensure_dataset(None, mirrors=[server.url("good")])  # already cached: no network
    assert server.requests == []


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_checksums_match_debian_copy(tmp_path):
    """The registry's Fashion-MNIST content checksums accept Debian's (re-compressed) copy, fetched
    through a file:// mirror."""
    data.download("fashion-mnist", tmp_path, mirrors=[FASHION.as_uri()])
    ds = data.load_dataset(tmp_path, num_classes=data.DATASETS["fashion-mnist"].num_classes)
    assert ds.x_train.shape == (60000, 28, 28) and ds.y_test.shape == (10000,)
