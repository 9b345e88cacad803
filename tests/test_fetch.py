"""Tests for denoisebench.data.fetch: real downloads from an HTTP server on 127.0.0.1 and from
file:// URLs, of a small real EuroSAT-shaped zip that the loader then reads; servers that cut,
stall or trickle against the limits of data/transfer.py, with small limits so each takes
seconds."""

from __future__ import annotations

import hashlib
import http.server
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, jpeg_bytes, write_zip

from denoisebench.data import fetch as fetch_module
from denoisebench.data import transfer
from denoisebench.data.fetch import (
    EUROSAT_RGB,
    EUROSAT_RGB_MIRROR,
    FetchError,
    Limits,
    fetch,
    main,
    sha256_of,
)
from denoisebench.data.images import load_eurosat

CLASSES = ("Forest", "River")
PER_CLASS = 3


class Server:
    """An HTTP server in a thread, serving `root`'s files, plus some that go wrong:
    /cut/NAME sends NAME's length but only its first half, then closes the connection;
    /stall/NAME sends its first half, then waits until the test ends;
    /trickle/NAME sends NAME's length, then one byte a second until the test ends;
    /slowheaders/NAME sends its status line one byte a second, never a header."""

    def __init__(self, root: Path) -> None:
        self.requests: list[str] = []
        self.release = threading.Event()
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs) -> None:
                super().__init__(*args, directory=str(root), **kwargs)

            def log_message(self, *args) -> None:
                pass

            def trickle(self, data: bytes) -> None:
                for i in range(len(data)):
                    self.wfile.write(data[i : i + 1])
                    self.wfile.flush()
                    if server.release.wait(1.0):
                        return

            def do_GET(self) -> None:
                server.requests.append(self.path)
                kind, _, name = self.path.lstrip("/").partition("/")
                if kind not in ("cut", "stall", "trickle", "slowheaders"):
                    return super().do_GET()
                if kind == "slowheaders":
                    return self.trickle(b"HTTP/1.0 200 OK\r\n")
                data = (root / name).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if kind == "trickle":
                    return self.trickle(data)
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                if kind == "stall":
                    server.release.wait(30)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A small real EuroSAT-shaped zip (2750/<Class>/*.jpg), about 30 KB."""
    rng = np.random.default_rng(0)
    members = {
        f"2750/{c}/{c}_{i}.jpg": jpeg_bytes(rng) for c in CLASSES for i in range(1, PER_CLASS + 1)
    }
    (tmp_path / "served").mkdir()
    return write_zip(tmp_path / "served" / "EuroSAT.zip", members)


@pytest.fixture
def server(source: Path) -> Iterator[Server]:
    s = Server(source.parent)
    yield s
    s.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_in(folder: Path) -> list[str]:
    """Every name in `folder`, hidden temporary files included."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], list[str]]:
    """main(argv): exit code, stdout lines, stderr lines."""
    code = main(list(argv), prog="python -m launch data")
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


def test_downloads_over_http_checks_the_checksum_and_the_loader_reads_it(
    tmp_path, source, server, capsys
):
    dest = tmp_path / "new" / "data"  # made, parents included
    code, out, err = run(capsys, "eurosat", str(dest), "--url", f"{server.url}/EuroSAT.zip",
                         "--sha256", digest(source).upper(), "--size", str(source.stat().st_size))  # fmt: skip
    assert (code, err) == (0, [])
    assert files_in(dest) == ["EuroSAT.zip"]  # no temporary file left beside it
    assert (dest / "EuroSAT.zip").read_bytes() == source.read_bytes()
    assert f"sha256 checked ({digest(source)})" in out[-2]
    assert out[-1] == f"train on it with: --data {dest / 'EuroSAT.zip'}"
    assert len(load_eurosat(dest / "EuroSAT.zip")) == len(CLASSES) * PER_CLASS


def test_downloads_from_a_file_url(tmp_path, source, capsys):
    code, _, err = run(capsys, "eurosat", str(tmp_path / "d"), "--url", source.as_uri(),
                       "--sha256", digest(source))  # fmt: skip
    assert (code, err) == (0, [])
    assert sha256_of(tmp_path / "d" / "EuroSAT.zip") == digest(source)


def test_a_wrong_checksum_names_both_digests_and_leaves_nothing(tmp_path, source, server, capsys):
    wrong = "0" * 64
    code, _, err = run(capsys, "eurosat", str(tmp_path / "d"), "--url",
                       f"{server.url}/EuroSAT.zip", "--sha256", wrong)  # fmt: skip
    assert code == 1 and len(err) == 1
    assert f"expected {wrong}, got {digest(source)}" in err[0]
    assert f"{server.url}/EuroSAT.zip" in err[0] and "not written" in err[0]
    assert files_in(tmp_path / "d") == []  # neither EuroSAT.zip nor the temporary file


def test_a_mirror_is_checked_against_the_published_file(tmp_path, source, server, capsys):
    """--url without --sha256 expects the published zip: a smaller file is refused by its
    Content-Length before any byte is written."""
    code, _, err = run(capsys, "eurosat", str(tmp_path / "d"), "--url", f"{server.url}/EuroSAT.zip")
    assert code == 1 and len(err) == 1
    assert f"sends {source.stat().st_size:,} bytes, expected {EUROSAT_RGB.size:,}" in err[0]
    assert "--url" not in err[0]  # the mirror hint is for the published URL only
    assert files_in(tmp_path / "d") == []


def test_a_file_already_there_is_checked_and_not_downloaded_again(tmp_path, source, server, capsys):
    args = ["eurosat", str(tmp_path), "--url", f"{server.url}/EuroSAT.zip", "--sha256",
            digest(source)]  # fmt: skip
    assert run(capsys, *args)[0] == 0
    assert server.requests == ["/EuroSAT.zip"]
    before = (tmp_path / "EuroSAT.zip").stat().st_mtime_ns
    code, out, _ = run(capsys, *args)
    assert code == 0 and "already present, sha256 checked" in out[0]
    assert server.requests == ["/EuroSAT.zip"]  # no second request
    assert (tmp_path / "EuroSAT.zip").stat().st_mtime_ns == before


def test_a_different_file_already_there_is_refused_and_left_alone(tmp_path, source, capsys):
    (tmp_path / "EuroSAT.zip").write_bytes(b"something else")
    code, _, err = run(capsys, "eurosat", str(tmp_path), "--url", source.as_uri(),
                       "--sha256", digest(source))  # fmt: skip
    assert code == 1 and len(err) == 1
    assert f"sha256 {hashlib.sha256(b'something else').hexdigest()}" in err[0]
    assert f"expected sha256 {digest(source)}" in err[0] and "left alone" in err[0]
    assert (tmp_path / "EuroSAT.zip").read_bytes() == b"something else"


def test_http_404_is_one_line_naming_the_url(tmp_path, source, server, capsys):
    url = f"{server.url}/missing.zip"
    code, _, err = run(capsys, "eurosat", str(tmp_path / "d"), "--url", url,
                       "--sha256", digest(source))  # fmt: skip
    assert code == 1
    assert err == [f"error: cannot download {url}: HTTP 404 File not found"]
    assert files_in(tmp_path / "d") == []


def test_connection_refused_is_one_line_naming_the_url(tmp_path, source, capsys):
    with socket.socket() as s:  # a port that was just free: nothing listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/EuroSAT.zip"
    code, _, err = run(capsys, "eurosat", str(tmp_path / "d"), "--url", url,
                       "--sha256", digest(source))  # fmt: skip
    assert code == 1 and len(err) == 1
    assert err[0].startswith(f"error: cannot download {url}: ") and "refused" in err[0]


def test_the_published_url_failing_names_the_mirror(tmp_path, monkeypatch, capsys):
    """No network here: the published URL fails at once (no DNS), and the one line names it and
    the mirror to try."""
    monkeypatch.setattr(fetch_module, "free_bytes", lambda _path: 10**12)

    def offline(request, timeout):
        raise transfer.urllib.error.URLError("offline")

    monkeypatch.setattr(transfer.urllib.request, "urlopen", offline)
    code, _, err = run(capsys, "eurosat", str(tmp_path))
    assert code == 1
    assert err == [
        f"error: cannot download {EUROSAT_RGB.url}: offline (another copy: --url "
        f"{EUROSAT_RGB_MIRROR})"
    ]


def test_a_connection_closed_mid_download_leaves_no_file(tmp_path, source, server, capsys):
    size = source.stat().st_size
    code, _, err = run(capsys, "eurosat", str(tmp_path / "d"), "--url",
                       f"{server.url}/cut/EuroSAT.zip", "--sha256", digest(source))  # fmt: skip
    assert code == 1 and len(err) == 1
    assert f"the connection closed after {size // 2:,} of {size:,} bytes" in err[0]
    assert files_in(tmp_path / "d") == []


def test_progress_lines_and_ctrl_c_mid_download(tmp_path, source, server):
    """Progress shows bytes / total; the download goes to a temporary file in the same folder,
    removed when Ctrl-C stops it, and the final name never appears."""
    dest, lines, seen = tmp_path / "d", [], []
    total = source.stat().st_size
    half = f"  {total // 2:,} / {total:,} bytes (50%), "

    def say(line: str) -> None:
        lines.append(line)
        if line.startswith("  "):
            seen.append(files_in(dest))
            if line.startswith(half):
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fetch(f"{server.url}/stall/EuroSAT.zip", dest, sha256=digest(source), size=total,
              filename="EuroSAT.zip", say=say, limits=Limits(progress_every_s=0))  # fmt: skip
    progress = [x for x in lines if x.startswith("  ")]
    assert progress[-1].startswith(half)
    assert all(len(names) == 1 for names in seen)
    assert seen[0][0].startswith(".EuroSAT.zip.") and seen[0][0].endswith(".part")
    assert files_in(dest) == []


def fetch_within(bound_s: float, url: str, dest: Path, **kwargs) -> tuple[Exception, float, list]:
    """fetch() in a thread, which must end within `bound_s` (the test fails, not hangs, when it
    does not): what it raised, how long it took, the lines it said."""
    lines: list[str] = []
    raised: list[Exception] = []

    def download() -> None:
        try:
            fetch(url, dest, filename="EuroSAT.zip", say=lines.append, **kwargs)
        except Exception as e:
            raised.append(e)

    start = time.monotonic()
    thread = threading.Thread(target=download, daemon=True)
    thread.start()
    thread.join(bound_s)
    took = time.monotonic() - start
    assert not thread.is_alive(), f"still downloading after {bound_s} s; said {lines}"
    assert len(raised) == 1, f"no error raised; said {lines}"
    return raised[0], took, lines


def test_a_trickling_server_meets_the_low_speed_limit_with_progress_lines_meanwhile(
    tmp_path, source, server
):
    """The probe: the right Content-Length, then a byte a second. Below 100 B/s over 2 s the
    download stops (about 2 s after the response), in one line naming the URL, the rate and
    the limit; a progress line every 0.5 s until then, though no read ever fills a chunk."""
    url, total = f"{server.url}/trickle/EuroSAT.zip", source.stat().st_size
    limits = Limits(progress_every_s=0.5, stall_s=30, speed_limit_bps=100, speed_time_s=2)
    error, took, lines = fetch_within(10, url, tmp_path / "d", sha256=digest(source), size=total,
                                      limits=limits)  # fmt: skip
    assert isinstance(error, FetchError) and "\n" not in str(error)
    assert re.fullmatch(
        rf"cannot download {re.escape(url)}: [0-3] B/s over the last 2 s, below the limit of "
        r"100 B/s \(--speed-limit; 0 turns it off\); stopped after [1-4] bytes, nothing written",
        str(error),
    ), error
    assert 2 <= took < 4.5  # the 2 s, a tick, and slack for a busy machine
    progress = [x for x in lines if x.startswith("  ")]
    assert len(progress) >= 3, lines
    for line in progress:
        assert re.fullmatch(rf"  \d+ / {total:,} bytes \(0%\), \d+ B/s(, no data for 1 s)?", line)
    assert files_in(tmp_path / "d") == []


def test_a_silent_server_meets_the_stall_limit_with_progress_lines_meanwhile(
    tmp_path, source, server
):
    """Half the file, then nothing: progress lines go on (saying for how long nothing came),
    and the stall limit stops the download."""
    url, total = f"{server.url}/stall/EuroSAT.zip", source.stat().st_size
    limits = Limits(progress_every_s=0.5, stall_s=2, speed_limit_bps=0)
    error, took, lines = fetch_within(10, url, tmp_path / "d", sha256=digest(source), size=total,
                                      limits=limits)  # fmt: skip
    assert str(error) == f"cannot download {url}: no data for 2 s after {total // 2:,} bytes"
    assert 2 <= took < 4.5
    progress = [x for x in lines if x.startswith("  ")]
    assert len(progress) >= 3 and re.search(r", 0 B/s, no data for [12] s$", progress[-1]), lines
    assert all(x.startswith(f"  {total // 2:,} / {total:,} bytes (50%), ") for x in progress)
    assert files_in(tmp_path / "d") == []


def test_a_status_line_trickled_byte_by_byte_meets_the_stall_limit(tmp_path, source, server):
    """Every byte of the status line comes within the socket's time-out, and no header ever
    does: the response as a whole must come within the stall limit."""
    url = f"{server.url}/slowheaders/EuroSAT.zip"
    limits = Limits(progress_every_s=0.5, stall_s=2)
    error, took, lines = fetch_within(10, url, tmp_path / "d", sha256=digest(source), size=None,
                                      limits=limits)  # fmt: skip
    assert str(error) == f"cannot download {url}: no response in 2 s"
    assert 2 <= took < 4.5
    assert "  waiting for a response: 1 s" in lines, lines
    assert files_in(tmp_path / "d") == []


def test_the_speed_limit_options_reach_the_download(tmp_path, source, server, capsys):
    url = f"{server.url}/trickle/EuroSAT.zip"
    start = time.monotonic()
    code, _, err = run(capsys, "eurosat", str(tmp_path / "d"), "--url", url, "--sha256",
                       digest(source), "--speed-limit", "100", "--speed-time", "1.5")  # fmt: skip
    assert code == 1 and len(err) == 1 and time.monotonic() - start < 5
    assert err[0].startswith(f"error: cannot download {url}: ")
    assert " B/s over the last 1.5 s, below the limit of 100 B/s (--speed-limit;" in err[0]
    assert files_in(tmp_path / "d") == []
    for option, bad in (("--speed-limit", "-1"), ("--speed-limit", "nan"), ("--speed-time", "0")):
        with pytest.raises(SystemExit) as e:
            main(["eurosat", str(tmp_path), option, bad])
        assert e.value.code == 2 and repr(bad) in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["FIFO", "folder", "character device"])
def test_a_file_url_that_is_not_a_regular_file_is_refused_at_once(tmp_path, source, kind):
    """A FIFO blocked open() until a writer came (forever); a folder and /dev/zero are no
    download either. Refused in one line naming the path, before the folder is made."""
    path = {"FIFO": tmp_path / "fifo", "folder": tmp_path, "character device": Path("/dev/zero")}
    if kind == "FIFO":
        os.mkfifo(path[kind])
    dest = tmp_path / "d"
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "denoisebench.data.fetch", "eurosat", str(dest),
         "--url", path[kind].as_uri(), "--sha256", digest(source)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert time.monotonic() - start < 20
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: {path[kind]}: a {kind}, not a regular file: a file:// URL must name a file"
    ]
    assert not dest.exists()


def test_sigterm_mid_download_removes_the_temporary_file(tmp_path, source, server):
    dest = tmp_path / "d"
    proc = subprocess.Popen(
        [sys.executable, "-m", "denoisebench.data.fetch", "eurosat", str(dest),
         "--url", f"{server.url}/stall/EuroSAT.zip", "--sha256", digest(source)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not any(n.endswith(".part") for n in files_in(dest)):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        time.sleep(0.2)  # the half sent is read; the process waits on the rest
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.strip() == "interrupted; nothing written"
    assert files_in(dest) == []


def test_a_checksum_is_always_checked(tmp_path, capsys):
    for bad in ("skip", "none", "", "ab" * 31):
        with pytest.raises(SystemExit) as e:
            main(["eurosat", str(tmp_path), "--sha256", bad])
        assert e.value.code == 2
        assert "a checksum is always checked" in capsys.readouterr().err
    with pytest.raises(FetchError, match="64 hex digits"):
        fetch("file:///x", tmp_path, sha256="skip", size=None, filename="x.zip")
    with pytest.raises(SystemExit):
        main(["eurosat", str(tmp_path), "--size", "5"])  # the published size is known
    assert "--size goes with --sha256" in capsys.readouterr().err
    assert files_in(tmp_path) == []


def test_a_file_given_as_the_folder_is_refused(tmp_path, source, capsys):
    code, _, err = run(capsys, "eurosat", str(source), "--url", source.as_uri(),
                       "--sha256", digest(source))  # fmt: skip
    assert code == 1 and err == [f"error: {source}: not a folder; give the folder to save "
                                 "EuroSAT.zip in"]  # fmt: skip


def test_the_published_figures_are_tensorflow_datasets_own():
    """EUROSAT_RGB is the line tensorflow-datasets records for the zip its eurosat/rgb builder
    checks (read from the installed package's file, without importing it)."""
    spec = importlib.util.find_spec("tensorflow_datasets")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("tensorflow-datasets is not installed")
    record = Path(next(iter(spec.submodule_search_locations))) / "url_checksums" / "eurosat.txt"
    rows = [line.split("\t") for line in record.read_text().splitlines()]
    expected = [EUROSAT_RGB.url, str(EUROSAT_RGB.size), EUROSAT_RGB.sha256, EUROSAT_RGB.filename]
    assert expected in rows, rows
