"""Download EuroSAT RGB's published zip into a folder, checked by size and sha256.

    python -m launch data eurosat DIR                  # DIR/EuroSAT.zip (94,280,567 bytes)
    python -m launch data eurosat DIR --url MIRROR     # the same file from another host
    python -m launch data eurosat DIR --url URL --sha256 HEX [--size BYTES]   # another file

The zip streams into a temporary file beside its final name and is renamed into place only once
its size and sha256 match, so `DIR/EuroSAT.zip` is either absent or the checked file: a failed,
interrupted or wrong download leaves nothing under that name. A file already there with the
right checksum is kept and not downloaded again; one with another checksum is refused and left
alone. A checksum is always checked: `--sha256` replaces it, nothing turns it off. Then train
with `--data DIR/EuroSAT.zip`.

Whatever the server does, a progress line comes every 5 s, and the download stops with one line
naming the URL when no response or no byte comes for 60 s, or when fewer than 10 kB/s arrive
averaged over 60 s (`--speed-limit BYTES_PER_S`, `--speed-time S`, as curl's; transfer.py holds
the limits and why a thread reads). A `file://` URL must name a regular file: a FIFO, a folder
or a device is refused in one line naming the path.

Standard library only (urllib, hashlib): fetching the data needs no framework installed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import math
import os
import re
import secrets
import signal
import sys
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from denoisebench.core.diskspace import free_bytes
from denoisebench.core.records import Interrupted
from denoisebench.data.transfer import (
    DEFAULT_LIMITS,
    SPEED_LIMIT_BPS,
    SPEED_TIME_S,
    FetchError,
    Limits,
    check_local_file,
    copy,
    rate,
)


@dataclass(frozen=True)
class Published:
    """A file as its publisher serves it, with the figures that identify it."""

    url: str
    size: int
    """bytes"""
    sha256: str
    """64 lowercase hex digits"""
    filename: str
    """the name it is saved under, the one the loaders look for"""


# The URL, size and sha256 are tensorflow-datasets' own record of the file its `eurosat/rgb`
# builder downloads: tensorflow_datasets/url_checksums/eurosat.txt (tensorflow/datasets at commit
# b5b3b54514857c2f489f7fa65a00a0ddc5a5050a, and the same line in the tensorflow-datasets 4.9.10
# wheel): "http://madm.dfki.de/files/sentinel/EuroSAT.zip  94280567  8ebea626...f70bd".
EUROSAT_RGB = Published(
    url="http://madm.dfki.de/files/sentinel/EuroSAT.zip",
    size=94_280_567,
    sha256="8ebea626349354c5328b142b96d0430e647051f26efc2dc974c843f25ecf70bd",
    filename="EuroSAT.zip",
)

# torchvision's EuroSAT downloads from this copy since pytorch/vision#8563, whose author says it
# is the original zip unmodified (same MD5 and sha256), rehosted with the EuroSAT author's
# permission (phelber/EuroSAT#10) after madm.dfki.de's TLS certificate expired. Named in the
# error for a failed download as the --url to try; its bytes are checked against EUROSAT_RGB's
# sha256 like any other.
EUROSAT_RGB_MIRROR = (
    "https://huggingface.co/datasets/torchgeo/eurosat/resolve/"
    "c877bcd43f099cd0196738f714544e355477f3fd/EuroSAT.zip"
)

DATASETS = {"eurosat": (EUROSAT_RGB, EUROSAT_RGB_MIRROR)}
"""What `python -m launch data NAME DIR` fetches: the file and a mirror to suggest."""

SCHEMES = ("http", "https", "file")
CHUNK_BYTES = 2**20
"""Bytes read at a time when checking a file already there."""
_SHA256 = re.compile(r"[0-9a-f]{64}")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _mb(nbytes: float) -> str:
    return f"{nbytes / 1e6:.1f} MB"


def _temporary(final: Path) -> tuple[BinaryIO, Path]:
    """A new file beside `final` (same folder, so the rename is atomic), open for writing.
    Created with mode 0o666 as open() creates files, so the umask decides who may read it
    (tempfile.mkstemp would make the zip 0600)."""
    while True:
        tmp = final.with_name(f".{final.name}.{secrets.token_hex(6)}.part")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except FileExistsError:
            continue
        return os.fdopen(fd, "wb"), tmp


def _check_existing(final: Path, sha256: str, size: int | None) -> bool:
    """True if `final` is already the checked file; FetchError if it is something else."""
    if not final.exists():
        return False
    if not final.is_file():
        raise FetchError(f"{final}: exists and is not a regular file; move it away")
    have = final.stat().st_size
    got = sha256_of(final) if size is None or have == size else None
    if got == sha256:
        return True
    what = f"sha256 {got}" if got else f"{have:,} bytes"
    want = f"sha256 {sha256}" if got else f"{size:,} bytes"
    raise FetchError(
        f"{final}: already exists with {what}, expected {want}; it was left alone: move it away "
        "or delete it, then run again"
    )


def fetch(
    url: str,
    folder: str | Path,
    *,
    sha256: str,
    size: int | None,
    filename: str,
    say: Callable[[str], None] = lambda line: print(line, flush=True),
    limits: Limits = DEFAULT_LIMITS,
) -> Path:
    """`url` saved as `folder/filename`, checked against `sha256` (and `size` when not None).

    Returns the file's path, downloaded or already there. Raises FetchError (one line) for a
    network failure, a limit met (`limits`: stall, low speed; transfer.py), a wrong size or
    checksum, a `file://` URL that is not a regular file, or a file already there that is
    something else; the temporary file is removed whatever ends the download, Ctrl-C included.
    """
    sha256 = sha256.lower()
    if not _SHA256.fullmatch(sha256):
        raise FetchError(f"sha256 {sha256!r}: expected 64 hex digits")
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in SCHEMES:
        raise FetchError(f"{url}: unsupported URL scheme {scheme!r} (use {', '.join(SCHEMES)})")
    if scheme == "file":
        check_local_file(url)  # a FIFO would block the download before it starts
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise FetchError(f"{folder}: not a folder; give the folder to save {filename} in")
    final = folder / filename
    if _check_existing(final, sha256, size):
        say(f"{final}: already present, sha256 checked ({sha256}); not downloaded again")
        return final
    folder.mkdir(parents=True, exist_ok=True)
    if size is not None and free_bytes(folder) < size:
        raise FetchError(f"{folder}: {_mb(free_bytes(folder))} free, {filename} needs {_mb(size)}")
    stale = sorted(folder.glob(f".{filename}.*.part"))
    if stale:
        say(f"note: {len(stale)} temporary file(s) left by an interrupted download, e.g. "
            f"{stale[0]}: safe to delete once no download is running")  # fmt: skip

    say(f"downloading {url}{f' ({_mb(size)})' if size else ''} -> {final}")
    out, tmp = _temporary(final)
    try:
        with out:
            got_bytes, got_sha = copy(url, out, tmp, size, say, limits)
            out.flush()
            os.fsync(out.fileno())
        if got_sha != sha256:
            raise FetchError(
                f"{url}: sha256 mismatch: expected {sha256}, got {got_sha} ({got_bytes:,} "
                f"bytes); {final} not written"
            )
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    say(f"{final}: {got_bytes:,} bytes, sha256 checked ({sha256})")
    return final


def _sha256_arg(text: str) -> str:
    if not _SHA256.fullmatch(text.lower()):
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected the file's sha256, 64 hex digits (a checksum is always checked)"
        )
    return text.lower()


def _size_arg(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of bytes >= 1")
    return int(text)


def _speed_limit_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text!r}: expected bytes per second >= 0 (0: no limit)")
    return value


def _seconds_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: expected seconds > 0")
    return value


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dataset", choices=sorted(DATASETS), help="what to download")
    parser.add_argument("folder", type=Path, help="folder to save it in (made if missing)")
    parser.add_argument(
        "--url",
        help="download from here instead (a mirror: http, https or file URL); the published "
        "checksum still applies unless --sha256 is given",
    )
    parser.add_argument(
        "--sha256", type=_sha256_arg,
        help="the checksum of the file at --url, when it is not the published file",
    )  # fmt: skip
    parser.add_argument(
        "--size", type=_size_arg,
        help="its size in bytes, checked too (with --sha256; default: not checked)",
    )  # fmt: skip
    parser.add_argument(
        "--speed-limit", type=_speed_limit_arg, default=SPEED_LIMIT_BPS, metavar="BYTES_PER_S",
        help=f"stop when fewer bytes/s than this arrive, averaged over --speed-time (as curl's; "
        f"default {SPEED_LIMIT_BPS:,}, {rate(SPEED_LIMIT_BPS)}; 0: no low-speed limit)",
    )  # fmt: skip
    parser.add_argument(
        "--speed-time", type=_seconds_arg, default=SPEED_TIME_S, metavar="S",
        help=f"seconds the --speed-limit average covers (default {SPEED_TIME_S:g})",
    )  # fmt: skip
    return parser


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SIGTERM ends the download as Ctrl-C does, unwinding through fetch(), which removes its
    temporary file on the way out (a process killed by the signal's default action would leave
    it). Only the main thread may set a handler: elsewhere this does nothing."""

    def stop(signum: int, _frame: object) -> None:
        raise Interrupted(signum)

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None, prog: str = "python -m denoisebench.data.fetch") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.size is not None and args.sha256 is None:
        parser.error("--size goes with --sha256 (the published file's size is already known)")
    published, mirror = DATASETS[args.dataset]
    url = args.url or published.url
    # Another checksum means another file, whose size is unknown unless given.
    sha256, size = (args.sha256, args.size) if args.sha256 else (published.sha256, published.size)
    limits = Limits(speed_limit_bps=args.speed_limit, speed_time_s=args.speed_time)
    try:
        with _sigterm_as_exit():
            path = fetch(url, args.folder, sha256=sha256, size=size, filename=published.filename,
                         limits=limits)  # fmt: skip
    except FetchError as e:
        hint = f" (another copy: --url {mirror})" if url == published.url else ""
        print(f"error: {e}{hint}", file=sys.stderr, flush=True)
        return 1
    except (KeyboardInterrupt, Interrupted) as e:
        print("interrupted; nothing written", file=sys.stderr, flush=True)
        return e.code if isinstance(e, Interrupted) else 128 + signal.SIGINT
    print(f"train on it with: --data {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
