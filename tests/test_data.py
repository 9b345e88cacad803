"""Tests for denoisebench.data.images: real JPEG files written by Pillow, read by the real loaders."""

from __future__ import annotations

import io
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import jpeg_bytes, write_zip
from PIL import Image

from denoisebench.core.config import DataConfig
from denoisebench.data.images import (
    EUROSAT_CLASSES,
    DataError,
    DataWarning,
    Images,
    load_builtin,
    load_eurosat,
    load_images,
    load_tfds,
    make_split,
    synthetic_images,
)

FEW_CLASSES = ("AnnualCrop", "Forest", "SeaLake")


def image_bytes(rng: np.random.Generator, fmt: str, mode: str = "RGB") -> bytes:
    """A 64x64 image of noise saved by Pillow in `fmt` ("PNG", "JPEG", ...) and `mode`."""
    pixels = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buf, format=fmt)
    return buf.getvalue()


def write_fake_eurosat(
    root: Path, classes: tuple[str, ...] = FEW_CLASSES, per_class: int = 4, seed: int = 0
) -> tuple[Path, Path]:
    """Write a fake EuroSAT as the folder root/extracted/2750/<class>/<class>_<i>.jpg and as
    root/EuroSAT.zip (same bytes, top folder 2750/ as published). Returns (folder, zip)."""
    rng = np.random.default_rng(seed)
    folder = root / "extracted"
    zip_path = root / "EuroSAT.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        for c in classes:
            (folder / "2750" / c).mkdir(parents=True)
            # A "_10" among the first few checks the plain string sort ("_10" before "_2").
            ids = [*range(1, per_class), 10] if per_class < 10 else range(1, per_class + 1)
            for i in ids:
                data = jpeg_bytes(rng)
                (folder / "2750" / c / f"{c}_{i}.jpg").write_bytes(data)
                zf.writestr(f"2750/{c}/{c}_{i}.jpg", data)
    return folder, zip_path


def zip_of_folder(folder: Path, path: Path) -> Path:
    """`folder`'s files zipped under their paths inside it (2750/<class>/*.jpg)."""
    return write_zip(
        path,
        {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.jpg"))},
    )


def load_eurosat_warnings(path: Path) -> tuple[Images, list[str]]:
    """`load_eurosat(path)` and the DataWarning messages it emitted, every one recorded (not only
    the first per code location, as Python's default filter would)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_eurosat(path)
    return loaded, [str(w.message) for w in caught if issubclass(w.category, DataWarning)]


@pytest.fixture
def fake(tmp_path: Path) -> tuple[Path, Path]:
    return write_fake_eurosat(tmp_path)


# --- load_eurosat ---------------------------------------------------------------------------


def test_zip_and_folder_give_the_same_images_in_canonical_order(fake: tuple[Path, Path]) -> None:
    folder, zip_path = fake
    from_zip = load_eurosat(zip_path)
    from_folder = load_eurosat(folder)
    assert from_zip.images.shape == (12, 64, 64, 3)
    assert from_zip.images.dtype == np.uint8
    expected = [
        f"{c}/{c}_{i}.jpg" for c in FEW_CLASSES for i in (1, 10, 2, 3)
    ]  # "_10" sorts before "_2": a plain string sort, as the TFDS filenames sort
    assert list(from_zip.names) == expected
    assert from_folder.names == from_zip.names
    np.testing.assert_array_equal(from_folder.images, from_zip.images)
    assert from_zip.source == "eurosat"
    assert "EuroSAT RGB (12 images)" in from_zip.description
    assert str(zip_path) in from_zip.description


def test_folder_path_may_point_at_2750_or_at_eurosat_rgb(fake: tuple[Path, Path]) -> None:
    folder, _ = fake
    reference = load_eurosat(folder)
    np.testing.assert_array_equal(load_eurosat(folder / "2750").images, reference.images)
    renamed = folder.parent / "renamed"
    shutil.copytree(folder / "2750", renamed / "EuroSAT_RGB")
    again = load_eurosat(renamed)
    assert again.names == reference.names
    np.testing.assert_array_equal(again.images, reference.images)


@pytest.mark.parametrize("prefix", ["EuroSAT_RGB/", ""])
def test_zip_with_other_top_folders(fake: tuple[Path, Path], tmp_path: Path, prefix: str) -> None:
    folder, _ = fake
    reference = load_eurosat(folder)
    members = {
        f"{prefix}{p.relative_to(folder / '2750').as_posix()}": p.read_bytes()
        for p in sorted((folder / "2750").rglob("*.jpg"))
    }
    other = load_eurosat(write_zip(tmp_path / "other.zip", members))
    assert other.names == reference.names
    np.testing.assert_array_equal(other.images, reference.images)


def test_pixels_equal_pillows_own_decode(fake: tuple[Path, Path]) -> None:
    folder, zip_path = fake
    loaded = load_eurosat(zip_path)
    for i, name in enumerate(loaded.names):
        with Image.open(folder / "2750" / name) as img:
            np.testing.assert_array_equal(loaded.images[i], np.asarray(img.convert("RGB")))
    # A real check, not a tautology: distinct files give distinct arrays.
    assert not np.array_equal(loaded.images[0], loaded.images[1])


# --- load_eurosat on broken input: DataError naming the culprit ------------------------------


def test_corrupt_jpeg_names_the_file(fake: tuple[Path, Path]) -> None:
    folder, _ = fake
    bad = folder / "2750" / "Forest" / "Forest_2.jpg"
    bad.write_bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    with pytest.raises(DataError, match="cannot decode") as e:
        load_eurosat(folder)
    assert str(bad) in str(e.value)


def test_truncated_jpeg_names_the_file(fake: tuple[Path, Path]) -> None:
    folder, _ = fake
    bad = folder / "2750" / "SeaLake" / "SeaLake_3.jpg"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated") as e:
        load_eurosat(folder)
    assert str(bad) in str(e.value)


def test_corrupt_jpeg_inside_zip_names_zip_and_member(
    fake: tuple[Path, Path], tmp_path: Path
) -> None:
    folder, _ = fake
    members = {
        f"2750/{p.relative_to(folder / '2750').as_posix()}": p.read_bytes()
        for p in sorted((folder / "2750").rglob("*.jpg"))
    }
    members["2750/Forest/Forest_3.jpg"] = members["2750/Forest/Forest_3.jpg"][:400]
    zip_path = write_zip(tmp_path / "broken.zip", members)
    with pytest.raises(DataError) as e:
        load_eurosat(zip_path)
    assert str(zip_path) in str(e.value)
    assert "2750/Forest/Forest_3.jpg" in str(e.value)


@pytest.mark.parametrize(("width", "height"), [(32, 32), (64, 48)])
def test_wrong_size_says_found_and_expected(
    fake: tuple[Path, Path], width: int, height: int
) -> None:
    folder, _ = fake
    bad = folder / "2750" / "AnnualCrop" / "AnnualCrop_2.jpg"
    bad.write_bytes(jpeg_bytes(np.random.default_rng(2), width, height))
    with pytest.raises(DataError) as e:
        load_eurosat(folder)
    message = str(e.value)
    assert str(bad) in message
    assert f"{width}x{height}" in message
    assert "expected 64x64" in message


def test_empty_class_folder_is_named(fake: tuple[Path, Path]) -> None:
    folder, _ = fake
    (folder / "2750" / "River").mkdir()
    with pytest.raises(DataError, match="empty class folder") as e:
        load_eurosat(folder)
    assert str(folder / "2750" / "River") in str(e.value)


@pytest.mark.parametrize("kind", ["folder", "dangling symlink", "symlink to /dev/zero", "fifo"])
def test_an_image_name_on_something_else_stops_the_load_naming_it(
    fake: tuple[Path, Path], kind: str
) -> None:
    """Before: each was dropped silently ("119 images"), though bad input stops the run."""
    import os

    folder, _ = fake
    entry = folder / "2750" / "Forest" / "Forest_odd.jpg"
    if kind == "folder":
        entry.mkdir()
    elif kind == "dangling symlink":
        entry.symlink_to(folder / "nowhere.jpg")
    elif kind == "symlink to /dev/zero":
        entry.symlink_to("/dev/zero")
    else:
        os.mkfifo(entry)
    says = {"folder": "a folder", "dangling symlink": "a symlink to nothing",
            "symlink to /dev/zero": "a device", "fifo": "a FIFO"}[kind]  # fmt: skip
    with pytest.raises(DataError) as e:
        load_eurosat(folder)
    assert str(e.value).startswith(f"{entry}: {says}")


def test_empty_class_folder_in_zip_is_named(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    zip_path = write_zip(
        tmp_path / "EuroSAT.zip",
        {"2750/Forest/Forest_1.jpg": jpeg_bytes(rng), "2750/River/": b""},
    )
    with pytest.raises(DataError, match="empty class folder") as e:
        load_eurosat(zip_path)
    assert str(zip_path) in str(e.value)
    assert "2750/River/" in str(e.value)


def test_folder_without_class_folders(tmp_path: Path) -> None:
    (tmp_path / "photos" / "holiday").mkdir(parents=True)
    with pytest.raises(DataError, match="no EuroSAT class folders") as e:
        load_eurosat(tmp_path / "photos")
    assert str(tmp_path / "photos") in str(e.value)


def test_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "EuroSAT.zip"
    with pytest.raises(DataError, match="no such file or folder") as e:
        load_eurosat(missing)
    assert str(missing) in str(e.value)


def test_file_named_zip_that_is_not_a_zip(tmp_path: Path) -> None:
    fake_zip = tmp_path / "EuroSAT.zip"
    fake_zip.write_text("<html>404 Not Found</html>")
    with pytest.raises(DataError, match="not a zip file") as e:
        load_eurosat(fake_zip)
    assert str(fake_zip) in str(e.value)


def test_zip_of_something_else_says_what_it_expected(tmp_path: Path) -> None:
    other = write_zip(tmp_path / "EuroSAT.zip", {"README.txt": b"hello"})
    with pytest.raises(DataError, match="without EuroSAT class folders") as e:
        load_eurosat(other)
    message = str(e.value)
    assert str(other) in message
    assert "README.txt" in message  # says what it found ...
    assert "2750/<class>/*.jpg" in message  # ... and what it expected
    assert "AnnualCrop" in message


# --- load_eurosat on files that are not RGB JPEGs: one DataWarning per load -----------------


@pytest.mark.parametrize("container", ["folder", "zip"])
def test_png_named_jpg_warns_once_naming_it(
    fake: tuple[Path, Path], tmp_path: Path, container: str
) -> None:
    folder, _ = fake
    png = image_bytes(np.random.default_rng(4), "PNG")
    (folder / "2750" / "Forest" / "Forest_2.jpg").write_bytes(png)
    path = folder if container == "folder" else zip_of_folder(folder, tmp_path / "png.zip")
    loaded, [message] = load_eurosat_warnings(path)
    assert message.startswith(f"{path}: 1 of 12 image files are not RGB JPEG")
    assert "2750/Forest/Forest_2.jpg (PNG, mode RGB)" in message
    # Decoded by its content, and used.
    with Image.open(io.BytesIO(png)) as img:
        expected = np.asarray(img.convert("RGB"))
    np.testing.assert_array_equal(
        loaded.images[loaded.names.index("Forest/Forest_2.jpg")], expected
    )


@pytest.mark.parametrize("container", ["folder", "zip"])
def test_clean_eurosat_gives_no_warning(fake: tuple[Path, Path], container: str) -> None:
    folder, zip_path = fake
    _, messages = load_eurosat_warnings(folder if container == "folder" else zip_path)
    assert messages == []


def test_many_files_that_are_not_jpeg_give_one_warning_with_the_count(
    fake: tuple[Path, Path],
) -> None:
    folder, _ = fake
    rng = np.random.default_rng(5)
    bad = sorted((folder / "2750").rglob("*.jpg"))[:7]
    for p in bad:
        p.write_bytes(image_bytes(rng, "PNG"))
    bad[0].write_bytes(image_bytes(rng, "GIF", "P"))
    _, [message] = load_eurosat_warnings(folder / "2750")
    assert message.startswith(f"{folder / '2750'}: 7 of 12 image files are not RGB JPEG")
    # Named by path inside the folder given, in canonical order: the first five, then the count.
    assert message.count("(PNG, mode RGB)") + message.count("(GIF, mode P)") == 5
    assert "and 2 more" in message
    assert "AnnualCrop/AnnualCrop_1.jpg (" in message
    assert "2750/" not in message.removeprefix(str(folder / "2750"))


def test_greyscale_jpeg_warns_with_its_mode(fake: tuple[Path, Path], tmp_path: Path) -> None:
    folder, _ = fake
    (folder / "2750" / "SeaLake" / "SeaLake_10.jpg").write_bytes(
        image_bytes(np.random.default_rng(6), "JPEG", "L")
    )
    zip_path = zip_of_folder(folder, tmp_path / "grey.zip")
    _, [message] = load_eurosat_warnings(zip_path)
    assert "2750/SeaLake/SeaLake_10.jpg (JPEG, mode L)" in message


@pytest.mark.parametrize("container", ["folder", "zip"])
def test_strict_refuses_a_png_named_jpg(
    fake: tuple[Path, Path], tmp_path: Path, container: str
) -> None:
    folder, _ = fake
    (folder / "2750" / "Forest" / "Forest_3.jpg").write_bytes(
        image_bytes(np.random.default_rng(7), "PNG")
    )
    path = folder if container == "folder" else zip_of_folder(folder, tmp_path / "png.zip")
    with pytest.raises(DataError, match="refused") as e:
        load_eurosat(path, strict=True)
    assert str(path) in str(e.value)
    assert "2750/Forest/Forest_3.jpg (PNG, mode RGB)" in str(e.value)


def test_strict_data_flag_reaches_the_loader(fake: tuple[Path, Path]) -> None:
    """`--strict-data` is data.strict in the run's config, and load_images applies it."""
    import argparse

    from denoisebench.core.config import load_config, parse_overrides
    from denoisebench.data.images import load_images
    from launch.folders import flag_overrides
    from launch.options import build_parser

    folder, _ = fake
    (folder / "2750" / "Forest" / "Forest_3.jpg").write_bytes(
        image_bytes(np.random.default_rng(7), "PNG")
    )
    args: argparse.Namespace = build_parser().parse_args(["--data", str(folder), "--strict-data"])
    cfg = load_config("smoke", parse_overrides(flag_overrides(args)))
    assert cfg.data.strict is True
    with pytest.raises(DataError, match="refused"):
        load_images(cfg.data, 64, seed=0)


# --- load_tfds ------------------------------------------------------------------------------


def test_tfds_gives_the_same_array_and_order_as_the_zip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("importlib_resources")  # the eurosat builder needs it (FACTS.md)
    from tensorflow_datasets.core.download import checksums
    from tensorflow_datasets.image_classification.eurosat import Eurosat

    manual = tmp_path / "manual"
    manual.mkdir()
    # The builder globs 2750/*/* and derives the label from the file name: all ten classes.
    _, zip_path = write_fake_eurosat(manual, classes=EUROSAT_CLASSES, per_class=3)
    # Only the fake zip's size and sha256 are registered, on the class and just for this test
    # (never register_checksums=True: it rewrites the installed package's checksum file).
    url = next(c.download_url for c in Eurosat.BUILDER_CONFIGS if c.name == "rgb")
    info = checksums.compute_url_info(zip_path)
    monkeypatch.setattr(
        Eurosat,
        "url_infos",
        {url: checksums.UrlInfo(size=info.size, checksum=info.checksum, filename="EuroSAT.zip")},
    )

    from_tfds = load_tfds(tmp_path / "tfds", manual_dir=manual)
    from_zip = load_eurosat(zip_path)
    assert len(from_tfds.names) == 30
    assert from_tfds.names == from_zip.names
    # Exactly equal: load_tfds decodes the stored JPEG bytes with Pillow, as load_eurosat does.
    np.testing.assert_array_equal(from_tfds.images, from_zip.images)
    assert from_tfds.source == "tfds"
    assert "EuroSAT RGB (30 images)" in from_tfds.description

    # Prepared now: a second call reads it without manual_dir or download.
    np.testing.assert_array_equal(load_tfds(tmp_path / "tfds").images, from_zip.images)


def test_tfds_not_prepared_explains_the_options(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not prepared") as e:
        load_tfds(tmp_path / "empty")
    message = str(e.value)
    assert str(tmp_path / "empty") in message
    assert "manual_dir" in message
    assert "EuroSAT.zip" in message
    assert "download" in message


def test_tfds_rejects_a_zip_other_than_the_published_one(tmp_path: Path) -> None:
    pytest.importorskip("importlib_resources")
    manual = tmp_path / "manual"
    manual.mkdir()
    _, zip_path = write_fake_eurosat(manual)
    with pytest.raises(DataError, match="checksum mismatch") as e:
        load_tfds(tmp_path / "data", manual_dir=manual)
    assert str(zip_path) in str(e.value)
    assert "data.source=eurosat" in str(e.value)


def test_tfds_manual_dir_without_the_zip(tmp_path: Path) -> None:
    (tmp_path / "manual").mkdir()
    with pytest.raises(DataError, match="not found") as e:
        load_tfds(tmp_path / "data", manual_dir=tmp_path / "manual")
    assert str(tmp_path / "manual" / "EuroSAT.zip") in str(e.value)


# --- load_builtin, synthetic_images ---------------------------------------------------------


def test_builtin_patches() -> None:
    first = load_builtin()
    second = load_builtin()
    assert first.images.shape == (959, 64, 64, 3)
    assert first.images.dtype == np.uint8
    assert len(first.names) == 959
    assert len(set(first.names)) == 959
    assert first.names[0] == "skimage:astronaut.png@y=0,x=0"
    assert first.names[1] == "skimage:astronaut.png@y=0,x=64"
    assert first.names == second.names
    np.testing.assert_array_equal(first.images, second.images)
    assert first.source == "builtin"
    assert "NOT EuroSAT" in first.description
    # Real photographs, not blank tiles.
    assert first.images.reshape(len(first.images), -1).std(axis=1).min() >= 2.0


def test_builtin_patch_is_the_photographs_pixels() -> None:
    import skimage

    photo = Path(skimage.__file__).parent / "data" / "astronaut.png"
    with Image.open(photo) as img:
        pixels = np.asarray(img.convert("RGB"))
    data = load_builtin(32)
    i = data.names.index("skimage:astronaut.png@y=64,x=96")
    np.testing.assert_array_equal(data.images[i], pixels[64:96, 96:128])


def test_synthetic_images_are_seeded() -> None:
    a = synthetic_images(5, 16, seed=3)
    assert a.images.shape == (5, 16, 16, 3)
    assert a.images.dtype == np.uint8
    assert a.source == "synthetic"
    assert "random noise" in a.description
    np.testing.assert_array_equal(a.images, synthetic_images(5, 16, seed=3).images)
    assert not np.array_equal(a.images, synthetic_images(5, 16, seed=4).images)


# --- make_split, load_images ----------------------------------------------------------------


def test_split_of_full_eurosat_is_the_papers() -> None:
    split = make_split(27_000, DataConfig())
    assert len(split.train) == 25_000
    assert len(split.test) == 2_000
    assert split.train.dtype == np.int64
    assert split.test.dtype == np.int64
    assert np.intersect1d(split.train, split.test).size == 0
    assert np.all(np.diff(split.train) > 0)
    assert np.all(np.diff(split.test) > 0)
    assert split.train.min() >= 0
    assert max(split.train.max(), split.test.max()) < 27_000


def test_split_is_seeded() -> None:
    a = make_split(1000, DataConfig(split_seed=7))
    b = make_split(1000, DataConfig(split_seed=7))
    c = make_split(1000, DataConfig(split_seed=8))
    np.testing.assert_array_equal(a.train, b.train)
    np.testing.assert_array_equal(a.test, b.test)
    assert not np.array_equal(a.test, c.test)


@pytest.mark.parametrize(
    ("n", "n_train", "n_test"), [(959, 888, 71), (270, 250, 20), (100, 93, 7), (2, 1, 1)]
)
def test_split_is_proportional_for_small_n(n: int, n_train: int, n_test: int) -> None:
    split = make_split(n, DataConfig())
    assert (len(split.train), len(split.test)) == (n_train, n_test)
    assert np.intersect1d(split.train, split.test).size == 0


@pytest.mark.parametrize("n", [0, 1])
def test_split_needs_two_images(n: int) -> None:
    with pytest.raises(DataError, match="at least 2"):
        make_split(n, DataConfig())


def test_load_images_applies_limit_in_canonical_order(fake: tuple[Path, Path]) -> None:
    _, zip_path = fake
    full = load_images(DataConfig(source="eurosat", path=str(zip_path)), image_size=64)
    cut = load_images(DataConfig(source="eurosat", path=str(zip_path), limit=5), image_size=64)
    assert len(full.names) == 12
    assert cut.names == full.names[:5]
    np.testing.assert_array_equal(cut.images, full.images[:5])
    assert "first 5 images" in cut.description
    # A limit at or above the count keeps everything.
    big = load_images(DataConfig(source="eurosat", path=str(zip_path), limit=50), image_size=64)
    assert big.names == full.names


def test_load_images_dispatches_on_source() -> None:
    synthetic = load_images(
        DataConfig(source="synthetic", synthetic_images=6, limit=4), image_size=8, seed=1
    )
    assert synthetic.images.shape == (4, 8, 8, 3)
    np.testing.assert_array_equal(synthetic.images, synthetic_images(6, 8, seed=1).images[:4])
    builtin = load_images(DataConfig(source="builtin"), image_size=64)
    assert builtin.source == "builtin"
    assert len(builtin.names) == 959
