"""How `fetch` copies a URL's bytes, with limits that hold whatever the server does.

A reader thread opens the URL and reads what has arrived (`read1`, up to READ_BYTES) into a
small queue; the calling thread writes and hashes what comes out of it and looks at the clock at
least every TICK_S. So, however the server sends its bytes:

- a progress line every `progress_every_s` (5 s): bytes, total and rate, and how long nothing
  has come when nothing has, also before the server answers;
- the stall limit: no response (status line and headers) in `stall_s` (60 s), or no byte for
  `stall_s`, stops the download;
- the low-speed limit, curl's --speed-limit/--speed-time: fewer than `speed_limit_bps` (10 kB/s)
  averaged over the last `speed_time_s` (60 s) stops it (0 turns it off).

Why a thread: a single `read(1 MiB)` returns only once a whole MiB has come, and a server that
sends the right Content-Length, then a byte a second, keeps every socket read under the
socket's time-out, so one call lasted days, with no line and no limit met. The caller stops on
its own clock; the reader sees the stop after its current read (a second on a trickle, at most
`stall_s` + 1 on a silent connection, the socket's time-out) and closes the connection itself.

A `file://` URL must name a regular file (check_local_file): open() on a FIFO waits for a writer
forever, and a device such as /dev/zero never ends.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import queue
import stat
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

READ_BYTES = 2**20
"""The most one read returns; a read returns what has arrived, one byte on a trickle."""
QUEUE_CHUNKS = 16
"""Reads held between the reader thread and the writer (16 MiB at most)."""
TICK_S = 0.25
"""The limits and the progress line are looked at this often while nothing arrives."""
PROGRESS_EVERY_S = 5.0
"""A progress line this often, whatever the rate: none for a download that ends sooner."""
STALL_S = 60.0
"""Seconds without a response (status line and headers), or without a byte, before the
download stops."""
SPEED_LIMIT_BPS = 10_000
"""Bytes per second, averaged over the last SPEED_TIME_S, below which the download stops (as
curl's --speed-limit): EuroSAT's 94 MB would take over 2.5 hours. 0 turns the limit off."""
SPEED_TIME_S = 60.0
"""Seconds the low-speed average covers (curl's --speed-time); counted from the response."""
USER_AGENT = "denoisebench-fetch"
NETWORK_ERRORS = (urllib.error.URLError, OSError, http.client.HTTPException, ValueError)


class FetchError(Exception):
    """A download that did not end with the checked file in place; the message is one line."""


@dataclass(frozen=True)
class Limits:
    """When a download stops, and how often it says how far it got (the module's defaults)."""

    progress_every_s: float = PROGRESS_EVERY_S
    """seconds between progress lines (0: a line at every read and every tick)"""
    stall_s: float = STALL_S
    """no response, or no byte, for this long: stop"""
    speed_limit_bps: float = SPEED_LIMIT_BPS
    """below this many bytes/s averaged over `speed_time_s`: stop (0: no low-speed limit)"""
    speed_time_s: float = SPEED_TIME_S
    """seconds the average covers"""

    def __post_init__(self) -> None:
        if not (self.progress_every_s >= 0 and self.speed_limit_bps >= 0):
            raise ValueError(f"{self}: progress_every_s and speed_limit_bps must be >= 0")
        if not (self.stall_s > 0 and self.speed_time_s > 0):
            raise ValueError(f"{self}: stall_s and speed_time_s must be > 0")


DEFAULT_LIMITS = Limits()
"""The module's figures: a line every 5 s; stop after 60 s of silence or below 10 kB/s."""


def rate(bytes_per_s: float) -> str:
    """A rate in the unit that shows it: 1 B/s, 12.3 kB/s, 4.5 MB/s."""
    if bytes_per_s >= 1e6:
        return f"{bytes_per_s / 1e6:.1f} MB/s"
    if bytes_per_s >= 1e3:
        return f"{bytes_per_s / 1e3:.1f} kB/s"
    return f"{bytes_per_s:.0f} B/s"


_KINDS = {
    stat.S_ISFIFO: "a FIFO",
    stat.S_ISDIR: "a folder",
    stat.S_ISCHR: "a character device",
    stat.S_ISBLK: "a block device",
    stat.S_ISSOCK: "a socket",
}


def check_local_file(url: str) -> None:
    """A `file://` URL must name a regular file (symlinks followed): anything else is refused in
    one line naming the path. stat() opens nothing, so a FIFO cannot block it. Other hosts
    than this one are left to urllib, which refuses them."""
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        return
    path = urllib.request.url2pathname(parts.path)
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise FetchError(f"{path}: {e.strerror} (from {url})") from None
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS.items() if test(mode)), "not a file")
        raise FetchError(f"{path}: {kind}, not a regular file: a file:// URL must name a file")


def _read(url: str, limits: Limits, events: queue.Queue, stop: threading.Event) -> None:
    """The reader thread: ("open", Content-Length), then ("data", bytes) until b"" (the end),
    or ("error", exception). Gives up as soon as `stop` is set and it is not inside a read."""

    def put(item: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                events.put(item, timeout=TICK_S)
                return True
            except queue.Full:
                continue
        return False

    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:  # the socket's own time-out only ends this thread: the caller's clock stops first
        response = urllib.request.urlopen(request, timeout=limits.stall_s + 1)
    except Exception as e:
        put(("error", e))
        return
    with response:
        if not put(("open", response.headers.get("Content-Length"))):
            return
        while not stop.is_set():
            try:
                chunk = response.read1(READ_BYTES)
            except Exception as e:
                put(("error", e))
                return
            if not put(("data", chunk)) or not chunk:
                return


class _Clock:
    """What the limits and the progress lines look at: the bytes so far and when they came."""

    def __init__(self, url: str, limits: Limits, start: float) -> None:
        self.url, self.limits = url, limits
        self.start = self.last_byte = self.last_line = start
        self.opened = False
        self.got = self.got_at_line = 0
        self.total: int | None = None
        self.window: deque[tuple[float, int]] = deque()
        """(time, bytes so far) samples, TICK_S apart, back to SPEED_TIME_S ago"""

    def open(self, total: int | None, now: float) -> None:
        self.opened, self.total, self.last_byte = True, total, now
        self.window.append((now, 0))

    def received(self, nbytes: int, now: float) -> None:
        self.got += nbytes
        self.last_byte = now

    def check(self, now: float) -> None:
        """FetchError (one line, naming the URL) when a limit is met."""
        lim, url = self.limits, self.url
        if not self.opened:
            if now - self.start >= lim.stall_s:
                raise FetchError(f"cannot download {url}: no response in {lim.stall_s:g} s")
            return
        if now - self.last_byte >= lim.stall_s:
            raise FetchError(
                f"cannot download {url}: no data for {lim.stall_s:g} s after {self.got:,} bytes"
            )
        if now - self.window[-1][0] >= TICK_S:
            self.window.append((now, self.got))
        while len(self.window) > 1 and self.window[1][0] <= now - lim.speed_time_s:
            self.window.popleft()
        since, got_then = self.window[0]
        if lim.speed_limit_bps > 0 and now - since >= lim.speed_time_s:
            average = (self.got - got_then) / (now - since)
            if average < lim.speed_limit_bps:
                raise FetchError(
                    f"cannot download {url}: {rate(average)} over the last {lim.speed_time_s:g} s, "
                    f"below the limit of {rate(lim.speed_limit_bps)} (--speed-limit; 0 turns it "
                    f"off); stopped after {self.got:,} bytes, nothing written"
                )

    def progress(self, now: float) -> str | None:
        """The progress line when one is due: bytes, total, the rate since the last line."""
        if now - self.last_line < self.limits.progress_every_s:
            return None
        recent = (self.got - self.got_at_line) / max(now - self.last_line, 1e-9)
        self.last_line, self.got_at_line = now, self.got
        if not self.opened:
            return f"  waiting for a response: {now - self.start:.0f} s"
        total = self.total
        of = f" / {total:,} bytes ({100 * self.got / total:.0f}%)" if total else " bytes"
        quiet = now - self.last_byte
        idle = f", no data for {quiet:.0f} s" if quiet >= max(TICK_S, 1.0) else ""
        return f"  {self.got:,}{of}, {rate(recent)}{idle}"


def _expected_total(url: str, stated: str | None, size: int | None) -> int | None:
    """The byte count to expect: the Content-Length, else `size`; refused when they differ."""
    total = int(stated) if stated and stated.isdigit() else size
    if size is not None and total != size:
        raise FetchError(
            f"{url}: the server sends {total:,} bytes, expected {size:,}: not the file "
            "expected; nothing written"
        )
    return total


def _failure(url: str, e: BaseException, clock: _Clock) -> BaseException:
    """The reader's exception as one line naming the URL (urllib's `<urlopen error>` unwrapped);
    an exception no network or file error explains is raised as it is."""
    if not isinstance(e, NETWORK_ERRORS):
        return e
    if isinstance(e, urllib.error.HTTPError):
        what = f"HTTP {e.code} {e.reason}"
    elif isinstance(e, urllib.error.URLError):
        what = str(e.reason)
    elif isinstance(e, TimeoutError):
        what = f"no data for {clock.limits.stall_s:g} s (timed out)"
    else:
        what = str(e) or type(e).__name__
    after = f" after {clock.got:,} bytes" if clock.opened else ""
    return FetchError(f"cannot download {url}: {what}{after}")


def copy(
    url: str,
    out: BinaryIO,
    tmp: Path,
    size: int | None,
    say: Callable[[str], None],
    limits: Limits,
) -> tuple[int, str]:
    """Copy `url` into `out` (the temporary file `tmp`) within `limits`, saying progress; returns
    the byte count and the sha256 of what was read. FetchError (one line) otherwise."""
    events: queue.Queue = queue.Queue(maxsize=QUEUE_CHUNKS)
    stop = threading.Event()
    reader = threading.Thread(
        target=_read, args=(url, limits, events, stop), name="fetch-reader", daemon=True
    )
    reader.start()
    try:
        return _consume(url, out, tmp, size, say, limits, events)
    finally:
        stop.set()  # the reader closes the connection after its current read


def _consume(
    url: str,
    out: BinaryIO,
    tmp: Path,
    size: int | None,
    say: Callable[[str], None],
    limits: Limits,
    events: queue.Queue,
) -> tuple[int, str]:
    digest = hashlib.sha256()
    clock = _Clock(url, limits, time.monotonic())
    while True:
        try:
            kind, value = events.get(timeout=TICK_S)
        except queue.Empty:
            kind, value = "tick", None
        now = time.monotonic()
        if kind == "open":
            clock.open(_expected_total(url, value, size), now)
        elif kind == "error":
            raise _failure(url, value, clock)
        elif kind == "data":
            if not value:
                break
            try:
                out.write(value)
            except OSError as e:
                raise FetchError(f"{tmp}: cannot write: {e}") from e
            digest.update(value)
            clock.received(len(value), now)
            # A wrong URL may serve far more than expected: stop at the first byte too many.
            if clock.total is not None and clock.got > clock.total:
                raise FetchError(
                    f"{url}: more than the {clock.total:,} bytes expected; nothing written"
                )
        clock.check(now)
        if line := clock.progress(now):
            say(line)
    if clock.total is not None and clock.got < clock.total:
        raise FetchError(
            f"cannot download {url}: the connection closed after {clock.got:,} of "
            f"{clock.total:,} bytes"
        )
    return clock.got, digest.hexdigest()
