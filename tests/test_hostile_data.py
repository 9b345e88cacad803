"""Hostile or mistaken data given as --data: refused in one line naming the file or member,
without reading more than the caps in data/images.py into memory and without hanging."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import jpeg_bytes, write_zip
from PIL import Image

from denoisebench.data.images import MAX_FILE_BYTES, DataError, load_eurosat


def jpeg(seed: int = 0) -> bytes:
    return jpeg_bytes(np.random.default_rng(seed))


def test_a_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "EuroSAT.zip"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match=r"EuroSAT.zip: not a regular file or a folder"):
        load_eurosat(fifo)


def test_a_device_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"^/dev/zero: not a regular file or a folder"):
        load_eurosat("/dev/zero")


def test_a_huge_zip_member_is_refused_before_it_is_read(tmp_path: Path) -> None:
    # 16 MiB + 1 of zeros deflates to about 16 KB: a small zip that would inflate past the cap
    zpath = write_zip(
        tmp_path / "bomb.zip",
        {"2750/Forest/Forest_1.jpg": jpeg(), "2750/Forest/Forest_2.jpg": bytes(MAX_FILE_BYTES + 1)},
        zipfile.ZIP_DEFLATED,
    )
    assert zpath.stat().st_size < 100_000
    with pytest.raises(DataError, match=r"member 2750/Forest/Forest_2.jpg\): 16,777,217 bytes"):
        load_eurosat(zpath)


def test_a_huge_file_in_a_folder_is_refused(tmp_path: Path) -> None:
    forest = tmp_path / "2750" / "Forest"
    forest.mkdir(parents=True)
    (forest / "Forest_1.jpg").write_bytes(jpeg())
    with open(forest / "Forest_2.jpg", "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: no disk used
    with pytest.raises(DataError, match=r"Forest_2.jpg: 16,777,217 bytes, more than the 16 MiB"):
        load_eurosat(tmp_path)


def test_an_encrypted_member_is_named(tmp_path: Path) -> None:
    zpath = tmp_path / "locked.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("2750/Forest/Forest_1.jpg", jpeg())
        # "encrypted", in the directory: the flag a password-protected zip's members carry
        zf.getinfo("2750/Forest/Forest_1.jpg").flag_bits |= 0x1
    with pytest.raises(DataError, match=r"member 2750/Forest/Forest_1.jpg\): the member is encr"):
        load_eurosat(zpath)


def test_an_unsupported_compression_method_is_named(tmp_path: Path) -> None:
    zpath = tmp_path / "deflate64.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("2750/Forest/Forest_1.jpg", jpeg())
        zf.getinfo("2750/Forest/Forest_1.jpg").compress_type = 9  # Deflate64, in the directory
    with pytest.raises(DataError, match=r"Forest_1.jpg\): compression method 9 is not supported"):
        load_eurosat(zpath)


def test_multispectral_tifs_are_recognised(tmp_path: Path) -> None:
    zpath = write_zip(tmp_path / "EuroSATallBands.zip", {"2750/Forest/Forest_1.tif": b"II*\0"})
    with pytest.raises(DataError, match=r"\.tif files, EuroSAT's multispectral release"):
        load_eurosat(zpath)
    forest = tmp_path / "ms" / "Forest"
    forest.mkdir(parents=True)
    (forest / "Forest_1.tif").write_bytes(b"II*\0")
    with pytest.raises(DataError, match=r"Forest: empty class folder .*multispectral"):
        load_eurosat(tmp_path / "ms")


def test_a_16_bit_png_is_refused_not_clipped(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64), 40000, dtype=np.uint16)).save(buf, format="PNG")
    zpath = write_zip(
        tmp_path / "deep.zip",
        {"2750/Forest/Forest_1.jpg": jpeg(), "2750/Forest/Forest_2.jpg": buf.getvalue()},
    )
    with pytest.raises(DataError, match=r"Forest_2.jpg\): a PNG image with I;16 pixels"):
        load_eurosat(zpath)


def test_duplicate_member_names_are_refused(tmp_path: Path) -> None:
    zpath = tmp_path / "twice.zip"
    with zipfile.ZipFile(zpath, "w") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        zf.writestr("2750/Forest/Forest_1.jpg", jpeg(1))
        zf.writestr("2750/Forest/Forest_1.jpg", jpeg(2))
    with pytest.raises(DataError, match=r"appear more than once, e.g. '2750/Forest/Forest_1.jpg'"):
        load_eurosat(zpath)


def test_an_oversized_image_is_refused_from_its_header(tmp_path: Path) -> None:
    """Refused before decoding: a 6000x6000 PNG of one colour is a few KB on disk and would be
    108 MB decoded."""
    buf = io.BytesIO()
    Image.new("RGB", (6000, 6000)).save(buf, format="PNG")
    zpath = write_zip(tmp_path / "big.zip", {"2750/Forest/Forest_1.jpg": buf.getvalue()})
    with pytest.raises(DataError, match=r"Forest_1.jpg\): image is 6000x6000 pixels"):
        load_eurosat(zpath)


@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_resume_from_a_truncated_checkpoint_names_the_file(tmp_path: Path, framework: str) -> None:
    """A run that failed in its second epoch, its checkpoint then cut in half: --resume fails
    in one line naming the checkpoint, recorded in the summary, and no traceback."""
    from helpers import launch

    from denoisebench.core.records import read_json

    first = launch("--profile", "smoke", "--framework", framework, "--epochs", "2",
                   "--results", str(tmp_path), "--run-id", "r",
                   env={"DENOISEBENCH_FAULT": "0:12"})  # fmt: skip
    assert first.returncode == 1, first.stdout + first.stderr
    ckpts = tmp_path / "r" / framework / "checkpoints"
    [data] = [p for p in ckpts.iterdir() if p.name == "last.pt" or p.name.startswith("ckpt-1.data")]
    os.truncate(data, data.stat().st_size // 2)
    proc = launch("--resume", str(tmp_path / "r"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    line = f"[{framework}] error: {ckpts}/"
    assert line in proc.stderr and "cannot load the checkpoint to resume from" in proc.stderr
    summary = read_json(tmp_path / "r" / framework / "summary.json")
    assert summary["status"] == "failed" and str(ckpts) in summary["error"]
