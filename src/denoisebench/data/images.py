"""Clean images for the benchmark, as uint8 arrays that both frameworks read unchanged.

Four sources, picked by `DataConfig.source`:

- eurosat: EuroSAT RGB (27,000 64x64 Sentinel-2 JPEGs) from `EuroSAT.zip` or its extracted folder;
- tfds: the same data through tensorflow-datasets' `eurosat/rgb` builder;
- builtin: photographs shipped inside the scikit-image wheel, cut into patches (offline, NOT EuroSAT);
- synthetic: seeded random noise images, for throughput runs only.

Both EuroSAT loaders return the images in one canonical order (sorted by file name) and decode
the JPEG bytes with Pillow, so they give the very same array. A file that is not an RGB JPEG
(say a PNG named .jpg) is decoded by its content and used, with one DataWarning per load that
names the first few; `load_eurosat(..., strict=True)` refuses it instead. `make_split` turns an
image count into the seeded train/test indices that both frameworks use.

This module imports no deep-learning framework; tensorflow-datasets is imported inside
`load_tfds` only.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import stat
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from tqdm import tqdm

if TYPE_CHECKING:
    from denoisebench.core.config import DataConfig

EUROSAT_CLASSES: tuple[str, ...] = (
    "AnnualCrop",
    "Forest",
    "HerbaceousVegetation",
    "Highway",
    "Industrial",
    "Pasture",
    "PermanentCrop",
    "Residential",
    "River",
    "SeaLake",
)
"""The ten class folders of EuroSAT RGB, as published."""

EUROSAT_TOP_FOLDERS: tuple[str, ...] = ("2750", "EuroSAT_RGB")
"""Folders that hold the class folders: `2750/` in the published EuroSAT.zip, `EuroSAT_RGB/` in
the later re-release."""

BUILTIN_PHOTOS: tuple[str, ...] = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "motorcycle_left.png",
    "retina.jpg",
    "rocket.jpg",
)
"""RGB photographs in scikit-image's own `skimage/data/` folder. Read from the wheel by file name,
never through `skimage.data.<name>()`, which may fetch over the network. Left out: greyscale
images, drawings (logo, colorwheel, chessboard) and motorcycle_right (nearly a copy of
motorcycle_left, so its patches would leak between train and test)."""

BUILTIN_MIN_PATCH_STD = 2.0
"""Builtin patches whose pixel standard deviation is below this are dropped: they are flat
(mostly the black surround of retina.jpg) and have nothing to denoise."""

_JPEG_SUFFIXES = (".jpg", ".jpeg")

_JPEG_FORMATS = ("JPEG", "MPO")
"""Pillow's `Image.format` for JPEG content (MPO: a JPEG with a multi-picture extension)."""

NOT_JPEG_SHOWN = 5
"""How many of the files that are not RGB JPEGs a DataWarning names; it gives the count of all."""

MAX_FILE_BYTES = 16 * 2**20
"""The largest image file read (a zip member's uncompressed size, or a file in a folder): 16 MiB.
A EuroSAT RGB JPEG is about 3 KB, and even a raw 64x64 image of 13 float64 bands is 0.4 MiB;
without a cap one 3 GiB member of a small zip is read whole into memory before it fails."""

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
"""Pillow modes of 16-bit and 32-bit pixels: converting them to RGB would clip every value above
255, so such a file is refused by name instead."""

_MULTISPECTRAL_SUFFIXES = (".tif", ".tiff")
"""EuroSAT's multispectral release (EuroSATallBands.zip) holds 13-band GeoTIFFs, not JPEGs."""


class DataError(ValueError):
    """Bad input data. The message names the file or folder, and inside a zip, the member."""


class DataWarning(UserWarning):
    """Input data that loads but is not what the source publishes (e.g. a PNG named .jpg in
    EuroSAT). `warnings.simplefilter("error", DataWarning)` turns it into an exception (the
    command-line `-W error::denoisebench.data.DataWarning` does not: Python reads it before the
    package can be imported)."""


@dataclass(frozen=True)
class Images:
    """A set of clean images in canonical order, with where they came from."""

    images: np.ndarray
    """uint8, shape (N, H, W, 3)."""
    names: tuple[str, ...]
    """One id per image, e.g. "AnnualCrop/AnnualCrop_1.jpg" or "skimage:astronaut.png@y=0,x=64"."""
    source: str
    """"eurosat", "tfds", "builtin" or "synthetic"."""
    description: str
    """Human label written into every output, so no figure is mistaken for one on EuroSAT."""

    def __post_init__(self) -> None:
        a = self.images
        if a.dtype != np.uint8 or a.ndim != 4 or a.shape[-1] != 3:
            raise DataError(f"images must be uint8 (N, H, W, 3), got {a.dtype} {a.shape}")
        if len(self.names) != len(a):
            raise DataError(f"{len(self.names)} names for {len(a)} images")

    def __len__(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class Split:
    """Indices into `Images.images`; identical for both frameworks."""

    train: np.ndarray
    """int64, sorted."""
    test: np.ndarray
    """int64, sorted, disjoint from `train`."""


# --- EuroSAT --------------------------------------------------------------------------------


def _canonical_key(name: str) -> tuple[str, str]:
    """Sort by basename, the key the TFDS `filename` feature also carries (plain string sort, so
    "AnnualCrop_10.jpg" comes before "AnnualCrop_2.jpg"); the full name only breaks ties."""
    return (name.rsplit("/", 1)[-1], name)


def _decode_image(data: bytes, where: str, image_size: int) -> tuple[np.ndarray, str | None]:
    """Decode one image file to (image_size, image_size, 3) uint8, or raise DataError naming it.

    Also returns what the file holds if it is not an RGB JPEG ("PNG, mode RGB", "JPEG, mode L"),
    else None.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            # Format, mode and size come from the content's header, known after open(): the
            # size is checked before decoding, so no image decodes to more than
            # image_size x image_size pixels.
            fmt, mode = img.format or "unknown format", img.mode
            if img.size != (image_size, image_size):
                w, h = img.size
                raise DataError(
                    f"{where}: image is {w}x{h} pixels (width x height), expected "
                    f"{image_size}x{image_size}"
                )
            if mode in _SIXTEEN_BIT_MODES:
                raise DataError(
                    f"{where}: a {fmt} image with {mode} pixels (16 or 32 bits); EuroSAT RGB is "
                    "8-bit RGB, and converting would clip every value above 255: convert the "
                    "file to 8-bit first"
                )
            # open() reads only the header: load() decodes all of it, so a truncated file fails
            # here rather than loading with its bottom rows grey.
            img.load()
            rgb = img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{where}: cannot decode image: {e}") from e
    kind = None if fmt in _JPEG_FORMATS and mode == "RGB" else f"{fmt}, mode {mode}"
    return np.asarray(rgb, dtype=np.uint8), kind


def _decode_all(
    names: list[str],
    read: Callable[[str], tuple[bytes, str]],
    image_size: int,
    desc: str,
) -> tuple[np.ndarray, dict[str, str]]:
    """Decode `names` in the given order; `read(name)` returns the bytes and where they live.

    Returns the images and, for each name whose file is not an RGB JPEG, what it holds.
    """
    # Preallocated: all of EuroSAT is 330 MB, and a list of arrays plus np.stack would double it.
    out = np.empty((len(names), image_size, image_size, 3), dtype=np.uint8)
    not_jpeg: dict[str, str] = {}
    for i, name in enumerate(tqdm(names, desc=desc, unit="img", mininterval=1.0)):
        data, where = read(name)
        out[i], kind = _decode_image(data, where, image_size)
        if kind:
            not_jpeg[name] = kind
    return out, not_jpeg


def _report_not_jpeg(
    where: str, not_jpeg: dict[str, str], inside: Callable[[str], str], total: int, strict: bool
) -> None:
    """One DataWarning (or with `strict`, a DataError) for all the files that are not RGB JPEGs,
    naming the first NOT_JPEG_SHOWN by `inside(name)`, their path inside the folder or zip."""
    if not not_jpeg:
        return
    shown = [f"{inside(n)} ({kind})" for n, kind in list(not_jpeg.items())[:NOT_JPEG_SHOWN]]
    more = f", and {len(not_jpeg) - len(shown)} more" if len(not_jpeg) > len(shown) else ""
    message = (
        f"{where}: {len(not_jpeg)} of {total} image files are not RGB JPEG, the format of "
        f"EuroSAT RGB: {', '.join(shown)}{more}"
    )
    if strict:
        raise DataError(f"{message}; refused (strict)")
    warnings.warn(
        f"{message}; decoded by their content and converted to RGB", DataWarning, stacklevel=3
    )


def _expected_layout() -> str:
    return (
        "expected EuroSAT RGB's layout: 2750/<class>/*.jpg (as in the published EuroSAT.zip), "
        "EuroSAT_RGB/<class>/*.jpg, or the class folders themselves, with classes among "
        + ", ".join(EUROSAT_CLASSES)
    )


def _list_folder(path: Path) -> dict[str, Path]:
    """Map "Class/file.jpg" -> file for an extracted EuroSAT folder."""
    root = next((path / t for t in EUROSAT_TOP_FOLDERS if (path / t).is_dir()), path)
    classes = [c for c in EUROSAT_CLASSES if (root / c).is_dir()]
    if not classes:
        raise DataError(f"{path}: no EuroSAT class folders found; {_expected_layout()}")
    files: dict[str, Path] = {}
    for c in classes:
        jpegs = [
            p
            for p in (root / c).iterdir()
            if p.suffix.lower() in _JPEG_SUFFIXES and not p.name.startswith(".")
        ]
        for p in jpegs:  # an image's name on something else: bad input, not a smaller data set
            _check_regular(p)
        if not jpegs:
            tifs = any(p.suffix.lower() in _MULTISPECTRAL_SUFFIXES for p in (root / c).iterdir())
            raise DataError(f"{root / c}: empty class folder (no .jpg files){_tif_hint(tifs)}")
        files.update((f"{c}/{p.name}", p) for p in jpegs)
    return files


def _check_regular(path: Path) -> None:
    """DataError naming a .jpg entry of a class folder that is not a regular file (a folder, a
    symlink to nothing, a FIFO, a device): dropped silently, it left a data set smaller than
    the one given; read, a FIFO blocks and /dev/zero never ends."""
    try:
        mode = path.stat().st_mode  # follows a symlink to what it names
    except FileNotFoundError:
        raise DataError(f"{path}: a symlink to nothing ({os.readlink(path)})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror})") from None
    if not stat.S_ISREG(mode):
        kind = {stat.S_IFDIR: "a folder", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a device",
                stat.S_IFBLK: "a device", stat.S_IFSOCK: "a socket"}.get(stat.S_IFMT(mode), "special")  # fmt: skip
        raise DataError(f"{path}: {kind}, not an image file; remove it or replace it")


def _tif_hint(tifs: bool) -> str:
    """What to say when a class folder holds GeoTIFFs instead of JPEGs."""
    if not tifs:
        return ""
    return (
        ": it holds .tif files, EuroSAT's multispectral release (13 bands); this benchmark "
        "reads the RGB release, EuroSAT.zip with 2750/<class>/*.jpg"
    )


def _list_zip(zf: zipfile.ZipFile, path: Path) -> dict[str, str]:
    """Map "Class/file.jpg" -> zip member for a EuroSAT zip."""
    twice = [m for m, n in collections.Counter(zf.namelist()).items() if n > 1]
    if twice:
        raise DataError(
            f"{path}: {len(twice)} member name(s) appear more than once, e.g. {twice[0]!r}: which "
            "copy is meant is ambiguous; re-create the zip"
        )
    members = [
        m
        for m in zf.namelist()
        # macOS archivers add __MACOSX/ and ._ resource forks next to the real files.
        if not m.startswith("__MACOSX/") and not m.rsplit("/", 1)[-1].startswith("._")
    ]
    tifs: set[str] = set()
    for prefix in [f"{t}/" for t in EUROSAT_TOP_FOLDERS] + [""]:
        found: dict[str, dict[str, str]] = {}
        for m in members:
            if not m.startswith(prefix):
                continue
            parts = m[len(prefix) :].split("/")
            if len(parts) != 2 or parts[0] not in EUROSAT_CLASSES:
                continue
            # A directory entry ("2750/Forest/") still shows the class folder exists, so that an
            # empty one is reported rather than skipped.
            in_class = found.setdefault(parts[0], {})
            if parts[1].lower().endswith(_JPEG_SUFFIXES):
                in_class[f"{parts[0]}/{parts[1]}"] = m
            elif parts[1].lower().endswith(_MULTISPECTRAL_SUFFIXES):
                tifs.add(parts[0])
        if found:
            break
    else:
        shown = ", ".join(members[:3]) + (", ..." if len(members) > 3 else "")
        raise DataError(
            f"{path}: a zip without EuroSAT class folders (it holds {len(members)} member(s): "
            f"{shown or 'none'}); {_expected_layout()}"
        )
    files: dict[str, str] = {}
    for c, in_class in found.items():
        if not in_class:
            raise DataError(
                f"{path} (member {prefix}{c}/): empty class folder (no .jpg files)"
                + _tif_hint(c in tifs)
            )
        files.update(in_class)
    return files


def check_data_path(path: Path) -> None:
    """Refuse, naming it, a data path that is missing or is neither a regular file nor a folder
    (a FIFO would block the run forever, a device such as /dev/zero never ends)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise DataError(
            f"{path}: no such file or folder (expected EuroSAT.zip or its folder)"
        ) from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e}") from e
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise DataError(
            f"{path}: not a regular file or a folder (expected EuroSAT.zip or its folder)"
        )


def _read_capped(f: io.BufferedIOBase | zipfile.ZipExtFile, where: str, size: int) -> bytes:
    """A file's bytes, refused by name beyond MAX_FILE_BYTES (checked from its stated size
    first, then by reading at most one byte more than the cap)."""
    too_big = (
        f"{where}: {{}} bytes, more than the {MAX_FILE_BYTES // 2**20} MiB an image file may hold"
    )
    if size > MAX_FILE_BYTES:
        raise DataError(too_big.format(f"{size:,}"))
    data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise DataError(too_big.format(f"over {MAX_FILE_BYTES:,}"))
    return data


def load_eurosat(path: str | Path, image_size: int = 64, *, strict: bool = False) -> Images:
    """EuroSAT RGB from `EuroSAT.zip` (read in place, not extracted) or its extracted folder.

    `path` may be the zip, the folder holding `2750/` or `EuroSAT_RGB/`, or that folder itself.
    Images come sorted by file name (the canonical order that `load_tfds` also uses).

    Files that are not RGB JPEGs (a PNG named .jpg, a greyscale JPEG) are decoded by their
    content and converted to RGB, with one DataWarning naming the first few and giving the count;
    with `strict`, the same message is a DataError instead.
    """
    path = Path(path).expanduser()
    check_data_path(path)
    desc = f"Decoding {path.name}"
    if path.is_dir():
        files = _list_folder(path)
        names = sorted(files, key=_canonical_key)

        def read_file(name: str) -> tuple[bytes, str]:
            file = files[name]
            try:
                with open(file, "rb") as f:
                    return _read_capped(f, str(file), file.stat().st_size), str(file)
            except OSError as e:
                raise DataError(f"{file}: cannot read: {e}") from e

        images, not_jpeg = _decode_all(names, read_file, image_size, desc)
        _report_not_jpeg(
            str(path), not_jpeg, lambda n: files[n].relative_to(path).as_posix(), len(names), strict
        )
    else:
        try:
            zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as e:
            raise DataError(
                f"{path}: not a zip file ({e}); expected EuroSAT.zip or its extracted folder"
            ) from e
        with zf:
            members = _list_zip(zf, path)
            names = sorted(members, key=_canonical_key)

            def read_member(name: str) -> tuple[bytes, str]:
                where = f"{path} (member {members[name]})"
                info = zf.getinfo(members[name])
                try:
                    with zf.open(info) as f:
                        return _read_capped(f, where, info.file_size), where
                except NotImplementedError as e:  # Deflate64 and other methods zipfile lacks
                    raise DataError(
                        f"{where}: compression method {info.compress_type} is not supported by "
                        f"Python's zipfile ({e}); extract the zip and pass the folder, or "
                        "re-create it with plain Deflate"
                    ) from e
                except RuntimeError as e:  # zipfile's word for an encrypted member (not the above)
                    raise DataError(
                        f"{where}: the member is encrypted (password-protected); EuroSAT.zip is "
                        "not: use the published zip, or extract it and pass the folder"
                    ) from e
                except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
                    raise DataError(f"{where}: cannot read from the zip: {e}") from e

            images, not_jpeg = _decode_all(names, read_member, image_size, desc)
        _report_not_jpeg(str(path), not_jpeg, members.__getitem__, len(names), strict)
    return Images(
        images=images,
        names=tuple(names),
        source="eurosat",
        description=f"EuroSAT RGB ({len(names):,} images) from {path}",
    )


def load_tfds(
    data_dir: str | Path | None,
    *,
    download: bool = False,
    manual_dir: str | Path | None = None,
    image_size: int = 64,
) -> Images:
    """EuroSAT RGB through tensorflow-datasets' `eurosat/rgb`, in `load_eurosat`'s order.

    `data_dir` is the TFDS data folder (None or "" for TFDS' default, ~/tensorflow_datasets). If
    the dataset is not prepared there, it is built from `manual_dir/EuroSAT.zip` when
    `manual_dir` is given, or downloaded when `download` is true (needs internet).

    This initialises TensorFlow's runtime: any `tf.config` device set-up must come before it.
    """
    import tensorflow as tf
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError

    # A PyTorch run that reads TFDS must not lose the GPU to TensorFlow, which otherwise reserves
    # all of its memory the moment tf.data starts. Too late once the runtime is up: then skip.
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            break

    where = f"tensorflow-datasets eurosat/rgb in {data_dir or '~/tensorflow_datasets'}"
    builder = tfds.builder("eurosat/rgb", data_dir=str(data_dir) if data_dir else None)
    if not builder.is_prepared():
        try:
            if manual_dir:
                zip_path = Path(manual_dir).expanduser() / "EuroSAT.zip"
                if not zip_path.is_file():
                    raise DataError(
                        f"{zip_path}: not found; manual_dir must be the folder holding the "
                        "published EuroSAT.zip"
                    )
                config = tfds.download.DownloadConfig(manual_dir=str(zip_path.parent))
                builder.download_and_prepare(download_config=config)
            elif download:
                builder.download_and_prepare()
            else:
                raise DataError(
                    f"{where}: not prepared. Either prepare it there once "
                    "(tfds.builder('eurosat/rgb', data_dir=...).download_and_prepare()), "
                    "or set data.manual_dir to the folder holding EuroSAT.zip to build it "
                    "offline, or set data.download=true to let tensorflow-datasets download it "
                    "(needs internet). Or use data.source=eurosat with data.path=EuroSAT.zip."
                )
        except NonMatchingChecksumError as e:
            got = Path(manual_dir).expanduser() / "EuroSAT.zip" if manual_dir else "the download"
            raise DataError(
                f"{got}: tensorflow-datasets accepts only the published EuroSAT.zip (checksum "
                f"mismatch); use data.source=eurosat for other copies. {e}"
            ) from e

    # SkipDecoding keeps each image as its stored bytes, which are the zip member's bytes
    # unchanged. TFDS would decode them with TensorFlow's default fast integer DCT, which differs
    # from Pillow's by up to ~5 grey levels; decoding with Pillow here makes this array equal to
    # load_eurosat's on the same zip.
    ds = builder.as_dataset(split="train", decoders={"image": tfds.decode.SkipDecoding()})
    label_names = builder.info.features["label"].names
    stored: dict[str, bytes] = {}
    for ex in tfds.as_numpy(ds):
        filename = ex["filename"].decode()
        stored[f"{label_names[int(ex['label'])]}/{filename}"] = bytes(ex["image"])
    if not stored:
        raise DataError(f"{where}: split 'train' is empty")
    names = sorted(stored, key=_canonical_key)
    images, not_jpeg = _decode_all(
        names, lambda n: (stored[n], f"{where} ({n})"), image_size, "Decoding eurosat/rgb"
    )
    _report_not_jpeg(where, not_jpeg, str, len(names), strict=False)
    return Images(
        images=images,
        names=tuple(names),
        source="tfds",
        description=f"EuroSAT RGB ({len(names):,} images) from {where}",
    )


# --- Offline stand-ins ----------------------------------------------------------------------


def load_builtin(image_size: int = 64) -> Images:
    """Photographs from the scikit-image wheel cut into non-overlapping patches (NOT EuroSAT).

    Each photograph of BUILTIN_PHOTOS, in that order, is tiled row-major from its top-left
    corner; the incomplete tiles at the right and bottom edges are dropped, and so are flat
    patches (BUILTIN_MIN_PATCH_STD). At 64x64 this gives 959 patches. No patch overlaps another,
    so no test pixel is ever seen in training.
    """
    if image_size < 1:
        raise DataError(f"image_size must be >= 1, got {image_size}")
    import skimage

    data_dir = Path(skimage.__file__).parent / "data"
    patches: list[np.ndarray] = []
    names: list[str] = []
    for photo in BUILTIN_PHOTOS:
        file = data_dir / photo
        try:
            with Image.open(file) as img:
                pixels = np.asarray(img.convert("RGB"), dtype=np.uint8)
        except OSError as e:
            raise DataError(f"{file}: cannot read scikit-image sample photograph: {e}") from e
        rows, cols = pixels.shape[0] // image_size, pixels.shape[1] // image_size
        for r in range(rows):
            for c in range(cols):
                y, x = r * image_size, c * image_size
                patch = pixels[y : y + image_size, x : x + image_size]
                if patch.std() < BUILTIN_MIN_PATCH_STD:
                    continue
                patches.append(patch)
                names.append(f"skimage:{photo}@y={y},x={x}")
    if not patches:
        raise DataError(f"{data_dir}: no {image_size}x{image_size} patches in {BUILTIN_PHOTOS}")
    return Images(
        images=np.stack(patches),
        names=tuple(names),
        source="builtin",
        description=(
            f"scikit-image sample photographs ({len(BUILTIN_PHOTOS)}) cut into {len(patches):,} "
            f"{image_size}x{image_size} patches -- NOT EuroSAT"
        ),
    )


def synthetic_images(n: int, image_size: int = 64, seed: int = 0) -> Images:
    """`n` seeded uniform-noise images: for throughput runs, meaningless for denoising quality."""
    if n < 1 or image_size < 1:
        raise DataError(f"synthetic images need n >= 1 and image_size >= 1, got {n}, {image_size}")
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, image_size, image_size, 3), dtype=np.uint8)
    return Images(
        images=images,
        names=tuple(f"synthetic:{i}" for i in range(n)),
        source="synthetic",
        description=(
            f"{n:,} random noise images ({image_size}x{image_size}, seed {seed}) for throughput "
            "runs -- NOT EuroSAT"
        ),
    )


# --- Entry points ---------------------------------------------------------------------------


def load_images(cfg: DataConfig, image_size: int, seed: int = 0) -> Images:
    """The images `cfg.source` names, cut to the first `cfg.limit` (0 = all) in canonical order.

    `seed` is used by source=synthetic only.
    """
    if cfg.source == "eurosat":
        data = load_eurosat(cfg.path, image_size, strict=cfg.strict)
    elif cfg.source == "tfds":
        data = load_tfds(
            cfg.path or None,
            download=cfg.download,
            manual_dir=cfg.manual_dir or None,
            image_size=image_size,
        )
    elif cfg.source == "builtin":
        data = load_builtin(image_size)
    elif cfg.source == "synthetic":
        data = synthetic_images(cfg.synthetic_images, image_size, seed)
    else:
        raise DataError(f"unknown data source {cfg.source!r}")
    if 0 < cfg.limit < len(data):
        data = dataclasses.replace(
            data,
            images=data.images[: cfg.limit].copy(),
            names=data.names[: cfg.limit],
            description=f"{data.description}; first {cfg.limit:,} images only (data.limit)",
        )
    return data


def make_split(n: int, cfg: DataConfig) -> Split:
    """Seeded train/test indices for `n` images, in the proportion cfg.n_train : cfg.n_test.

    For all of EuroSAT (27,000) that is the paper's 25,000 / 2,000; for fewer images both parts
    shrink proportionally, with at least one image in each.
    """
    if n < 2:
        raise DataError(f"cannot split {n} image(s) into train and test: need at least 2")
    total = cfg.n_train + cfg.n_test
    n_test = min(n - 1, max(1, round(n * cfg.n_test / total)))
    n_train = max(1, min(n - n_test, round(n * cfg.n_train / total)))
    order = np.random.default_rng(cfg.split_seed).permutation(n)
    return Split(
        train=np.sort(order[n_test : n_test + n_train]).astype(np.int64),
        test=np.sort(order[:n_test]).astype(np.int64),
    )
