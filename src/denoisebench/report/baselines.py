"""Classical denoisers on a run's noisy test images, to place the autoencoders against methods
that need no training (the paper's Table 1 lists BM3D).

    from denoisebench.report.baselines import run_baselines
    result = run_baselines(Path("results/<run-id>"), images=8, seed=0)
    print(result.frame)   # method, images, psnr_db, ssim, mae, seconds, params, reason

Every method, the noisy input and each framework's outputs are scored on the SAME seeded sample
of `test_samples.npz` (the run's first 32 test images), with `metrics.image_quality`, so their
figures compare directly; the sample size goes beside the figures. BM3D takes about 1 s per
64x64 RGB image on one core (shared/FACTS.md, "Report tools"), which is why it runs on a
sample and not the whole test split.

The noise level BM3D and non-local means need is the config's sigma for Gaussian noise; other
noise kinds are not additive Gaussian, so sigma is estimated from the noisy images with
`skimage.restoration.estimate_sigma`, and the result says so. Parameters are fixed rules of
sigma, not tuned on these images (tuning on the test images would flatter the baselines).
A method that cannot run (bm3d not installed, say) is a row with no figures and the reason.

A report of many run folders (`score_run_folders`) scores every folder's frameworks; the
classical methods and the noisy input once per set of noisy test images: a folder whose sample
is the same as one scored before (repeats, other device counts of one config) gets only its
frameworks' rows and says whose images it shares. A folder with no rows gets a line saying why.

A method's outputs depend only on the noisy images and its parameters, so they are cached
(`cache_dir()`, one file per method, parameters, library version and noisy sample): a report
after every run, or over many runs of one test set, scores the classical methods once. A cache
hit is said on the console and in the row's `params`; `seconds` is the time measured when the
outputs were computed.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from denoisebench.core.records import FRAMEWORKS, read_json
from denoisebench.measure.quality import image_quality
from denoisebench.report.discover import NPZ_ERRORS, read_arrays

FRAMEWORK_NAMES = {"torch": "PyTorch", "tf": "TensorFlow"}
# Rules of the noise sigma, fixed before looking at any result: scikit-image's gallery uses
# h = 0.8 sigma for fast-mode non-local means; TV's weight grows with the noise it removes.
NLM_H_PER_SIGMA = 0.8
NLM_PATCH_SIZE = 5
NLM_PATCH_DISTANCE = 6
TV_WEIGHT_PER_SIGMA = 1.0

COLUMNS = ["method", "images", "psnr_db", "ssim", "mae", "seconds", "params", "reason"]


@dataclass
class BaselineResult:
    """Scores of every method on one sample, and the images, for the report's picture grid."""

    run_dir: Path
    frame: pd.DataFrame
    """One row per method (COLUMNS); figures missing (NaN) where `reason` says why."""
    indices: np.ndarray
    """Positions in test_samples.npz of the sampled images (sorted)."""
    clean: np.ndarray
    noisy: np.ndarray
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    """Method name -> its images for the sample (only the methods that ran)."""
    sigma: float | None = None
    sigma_source: str = ""
    """Where sigma came from: the config, or an estimate (non-Gaussian noise)."""
    same_images_as: Path | None = None
    """The run folder scored before on the same noisy sample: its rows for the noisy input and
    the classical methods hold for this one, which has only its frameworks' rows; None: own."""


def sample_indices(n: int, size: int, seed: int) -> np.ndarray:
    """A seeded sample of min(size, n) distinct positions, sorted so the grid keeps test order."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(size, n), replace=False))


def noise_sigma(config: dict[str, Any], noisy: np.ndarray) -> tuple[float, str]:
    """The noise standard deviation for BM3D and NLM, and where it came from."""
    noise = config.get("noise", {})
    kind = noise.get("kind", "gaussian")
    if kind == "gaussian":
        return float(noise["sigma"]), f"from the config (gaussian noise, sigma {noise['sigma']:g})"
    from skimage.restoration import estimate_sigma

    estimates = [estimate_sigma(img, channel_axis=-1, average_sigmas=True) for img in noisy]
    sigma = float(np.mean(estimates))
    return sigma, (
        f"estimated with skimage.restoration.estimate_sigma ({kind} noise is not additive "
        f"Gaussian; mean over the sample): {sigma:.3f}"
    )


def _bm3d(sigma: float) -> Callable[[np.ndarray], np.ndarray]:
    import bm3d  # optional at run time: a missing package becomes a reason, not a crash

    return lambda img: bm3d.bm3d_rgb(img, sigma_psd=sigma)


def _nlm(sigma: float) -> Callable[[np.ndarray], np.ndarray]:
    from skimage.restoration import denoise_nl_means

    return lambda img: denoise_nl_means(
        img,
        h=NLM_H_PER_SIGMA * sigma,
        sigma=sigma,
        patch_size=NLM_PATCH_SIZE,
        patch_distance=NLM_PATCH_DISTANCE,
        fast_mode=True,
        channel_axis=-1,
    )


def _tv(sigma: float) -> Callable[[np.ndarray], np.ndarray]:
    from skimage.restoration import denoise_tv_chambolle

    return lambda img: denoise_tv_chambolle(
        img, weight=TV_WEIGHT_PER_SIGMA * sigma, channel_axis=-1
    )


def _params(method: str, sigma: float) -> str:
    return {
        "BM3D": f"bm3d.bm3d_rgb, sigma_psd {sigma:.3f}, profile 'np'",
        "non-local means": (
            f"skimage denoise_nl_means, h {NLM_H_PER_SIGMA} x sigma = "
            f"{NLM_H_PER_SIGMA * sigma:.3f}, patch {NLM_PATCH_SIZE}, "
            f"distance {NLM_PATCH_DISTANCE}, fast mode"
        ),
        "total variation": (
            f"skimage denoise_tv_chambolle, weight {TV_WEIGHT_PER_SIGMA} x sigma = "
            f"{TV_WEIGHT_PER_SIGMA * sigma:.3f}"
        ),
    }[method]


METHODS: dict[str, Callable[[float], Callable[[np.ndarray], np.ndarray]]] = {
    "BM3D": _bm3d,
    "non-local means": _nlm,
    "total variation": _tv,
}

METHOD_PACKAGES = {
    "BM3D": "bm3d",
    "non-local means": "scikit-image",
    "total variation": "scikit-image",
}
"""The package whose version is part of a method's cache key (a new version may denoise
otherwise)."""


def cache_dir() -> Path:
    """Where baseline outputs are cached: $XDG_CACHE_HOME/denoisebench/baselines, by default
    ~/.cache/denoisebench/baselines. Deleting it only costs the time to score them again."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "denoisebench" / "baselines"


def cache_key(method: str, params: str, noisy: np.ndarray) -> str:
    """The cache file name of `method` with `params` on the float32 `noisy` sample."""
    try:
        version = metadata.version(METHOD_PACKAGES[method])
    except metadata.PackageNotFoundError:
        version = "missing"
    h = hashlib.sha256(f"{method}|{params}|{version}|{noisy.shape}".encode())
    h.update(np.ascontiguousarray(noisy, dtype=np.float32).tobytes())
    return h.hexdigest()[:32]


def denoise_cached(
    method: str, sigma: float, noisy: np.ndarray, where: str
) -> tuple[np.ndarray, float, bool]:
    """`method`'s outputs on `noisy`, the seconds they took when computed, and whether they came
    from the cache. A damaged cache file is computed again; a cache that cannot be written is
    skipped (the outputs are still returned)."""
    path = cache_dir() / f"{cache_key(method, _params(method, sigma), noisy)}.npz"
    try:
        with np.load(path) as f:
            out, seconds = f["outputs"], float(f["seconds"])
        if out.shape == noisy.shape:
            print(f"baselines: {method} on {len(noisy)} images of {where}: cached", flush=True)
            return out, seconds, True
    except (OSError, ValueError, KeyError, EOFError):
        pass  # not cached yet, or a damaged file: compute
    print(f"baselines: {method} on {len(noisy)} images of {where} ...", flush=True)
    t0 = time.perf_counter()
    denoise = METHODS[method](sigma)
    out = np.stack([np.clip(denoise(img), 0.0, 1.0) for img in noisy]).astype(np.float32)
    seconds = time.perf_counter() - t0
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, outputs=out, seconds=np.float64(seconds))
        os.replace(tmp, path)
    except OSError as e:
        print(f"baselines: not cached ({path.parent}: {e.strerror})", file=sys.stderr)
    return out, seconds, False


def run_baselines(
    run_dir: Path,
    images: int = 8,
    seed: int = 0,
    methods: tuple[str, ...] = tuple(METHODS),
    scored: Sequence[BaselineResult] = (),
) -> BaselineResult:
    """Score the classical methods, the noisy input and each framework's outputs on one sample.

    `run_dir` is one run folder (test_samples.npz, config.json, <framework>/test_outputs.npz);
    a damaged test_samples.npz is a ValueError naming it (the report skips such a folder first:
    discover.damage), a damaged test_outputs.npz a row with no figures that names it. When one
    of `scored` drew the same clean and noisy sample, only the frameworks are scored and the
    result names that folder (`same_images_as`).
    """
    run_dir = Path(run_dir)
    try:
        samples = read_arrays(run_dir / "test_samples.npz", ("clean", "noisy"))
    except NPZ_ERRORS as e:
        raise ValueError(f"{run_dir / 'test_samples.npz'}: {type(e).__name__}: {e}") from e
    idx = sample_indices(len(samples["clean"]), images, seed)
    clean = samples["clean"][idx].astype(np.float32)
    noisy = samples["noisy"][idx].astype(np.float32)
    sigma, sigma_source = noise_sigma(read_json(run_dir / "config.json"), noisy)
    same = next((r for r in scored if _same_sample(r, idx, clean, noisy)), None)
    if same is not None:
        methods = ()
    n = len(idx)
    rows: list[dict[str, Any]] = []
    outputs: dict[str, np.ndarray] = {}

    def score(method: str, images_out: np.ndarray, seconds: float | None, params: str) -> None:
        q = image_quality(clean, images_out)
        outputs[method] = images_out
        rows.append(
            {
                "method": method,
                "images": n,
                "psnr_db": q["psnr_db"],
                "ssim": q["ssim"],
                "mae": q["mae"],
                "seconds": seconds,
                "params": params,
                "reason": None,
            }
        )

    def missing(method: str, reason: str, params: str = "") -> None:
        rows.append({"method": method, "images": n, "params": params, "reason": reason})

    if same is None:
        score("noisy input", noisy, None, sigma_source)
    for method in methods:
        try:
            out, seconds, cached = denoise_cached(method, sigma, noisy, run_dir.name)
        except Exception as e:  # an import or library failure: report it, keep the report
            missing(method, f"{method} failed: {type(e).__name__}: {e}", _params(method, sigma))
            continue
        params = _params(method, sigma) + (" (cached)" if cached else "")
        score(method, out, seconds, params)
    for framework in FRAMEWORKS:
        path = run_dir / framework / "test_outputs.npz"
        name = FRAMEWORK_NAMES[framework]
        if not path.exists():
            missing(name, f"no {framework}/test_outputs.npz in {run_dir}")
            continue
        try:
            out = read_arrays(path, ("outputs",))["outputs"]
        except NPZ_ERRORS as e:
            missing(name, f"{path}: {type(e).__name__}: {e}")
            continue
        if len(out) != len(samples["clean"]):
            missing(name, f"{path}: {len(out)} outputs for {len(samples['clean'])} test samples")
            continue
        score(name, out[idx].astype(np.float32), None, f"autoencoder outputs ({path.parent.name})")
    return BaselineResult(
        run_dir=run_dir,
        frame=pd.DataFrame(rows, columns=COLUMNS),
        indices=idx,
        clean=clean,
        noisy=noisy,
        outputs=outputs,
        sigma=sigma,
        sigma_source=sigma_source,
        same_images_as=None if same is None else same.run_dir,
    )


def _same_sample(
    result: BaselineResult, idx: np.ndarray, clean: np.ndarray, noisy: np.ndarray
) -> bool:
    """Whether `result` scored its own methods on exactly this sample."""
    return (
        result.same_images_as is None
        and np.array_equal(result.indices, idx)
        and np.array_equal(result.clean, clean)
        and np.array_equal(result.noisy, noisy)
    )


def score_run_folders(
    runs: pd.DataFrame, images: int, seed: int, methods: tuple[str, ...]
) -> tuple[list[BaselineResult], list[str]]:
    """The baselines of every run folder of the report's runs table (columns run, folder,
    framework, devices, status, data_setup) with at least one completed run, and one line per
    folder that has no rows, saying why.

    Per test set (data and noise config; the sets in the order of their first folder's path),
    the folder with both frameworks and the fewest devices is scored first, then the others by
    path; each later folder with the same sample adds only
    its frameworks' rows (run_baselines' `scored`)."""
    results: list[BaselineResult] = []
    none: list[str] = []
    labels = dict(zip(runs["folder"], runs["run"], strict=True)) if not runs.empty else {}
    done = runs[runs["status"] == "completed"]
    test_sets = sorted(done.groupby("data_setup"), key=lambda item: item[1]["folder"].min())
    for _data_id, sel in test_sets:
        folders = sel.groupby("folder").agg(
            frameworks=("framework", "nunique"), devices=("devices", "min")
        )
        order = folders.sort_values(
            ["frameworks", "devices"], ascending=[False, True], kind="stable"
        )
        for folder in map(Path, order.index):
            if not (folder / "test_samples.npz").is_file():
                none.append(f"{labels[str(folder)]}: no rows (no test_samples.npz in it)")
                continue
            results.append(run_baselines(folder, images, seed, methods, scored=results))
    for folder in dict.fromkeys(runs["folder"]) if not runs.empty else ():
        if folder not in set(done["folder"]):
            none.append(f"{labels[folder]}: no rows (no completed framework run)")
    return results, none
