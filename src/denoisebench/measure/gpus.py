"""Which GPU, through NVML: loading NVML, the NVML index behind each CUDA device ordinal
(CUDA_VISIBLE_DEVICES by index, UUID or MIG device), and the identity of a physical GPU that
every process agrees on (its UUID). Framework-free; the profiler and the run conditions read
the devices these name.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any


def load_nvml() -> tuple[Any | None, str | None]:
    """(the pynvml module, initialised) or (None, why not)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml, None
    except Exception as e:  # no library, no driver, no device
        return None, f"NVML unavailable: {e}"


def nvml_read(fn: Any, *args: Any) -> Any:
    """One NVML call; None where the GPU does not support it or the call fails."""
    try:
        return fn(*args)
    except Exception:
        return None


def gpu_identity(nvml: Any, handle: Any) -> str | None:
    """What names one physical GPU whichever process asks: its NVML UUID (`GPU-...`), else its
    PCI bus id (`pci:0000:3B:00.0`); None where NVML gives neither. Not the NVML index, which
    depends on the GPUs a process may see."""
    uuid = as_str(nvml_read(getattr(nvml, "nvmlDeviceGetUUID", None), handle))
    if uuid:
        return uuid
    bus = as_str(
        getattr(nvml_read(getattr(nvml, "nvmlDeviceGetPciInfo", None), handle), "busId", None)
    )
    return f"pci:{bus}" if bus else None


def as_str(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def nvml_indices(
    cuda_indices: list[int], env: Mapping[str, str] | None = None, nvml: Any | None = None
) -> list[int]:
    """NVML indices of the GPUs behind CUDA device ordinals, one per ordinal.

    CUDA numbers the devices a process sees from 0. CUDA_VISIBLE_DEVICES (read from `env`,
    default os.environ), when set, lists them in that order; each entry is an index, a GPU
    UUID (`GPU-<uuid>`, or a unique prefix of one, as CUDA accepts) or a MIG device
    (`MIG-<uuid>`; `MIG-GPU-<uuid>/<gi>/<ci>` on drivers before R470). An index entry is
    taken as the NVML index. A UUID entry is looked up in NVML (`nvml`, or pynvml loaded here
    when None); a MIG device maps to its parent GPU, since NVML reads power and energy for
    whole GPUs only (the figures then include whatever else runs on that GPU). Two MIG devices
    of one GPU give its index twice.

    Index entries, and ordinals without a mask, are CUDA's numbers. They are NVML's (PCI bus
    order) when CUDA_DEVICE_ORDER=PCI_BUS_ID (the launcher sets it) or when all the GPUs are
    one model. Otherwise (CUDA's default FASTEST_FIRST on a machine with GPUs of different
    models) the mapping returned is a guess and a warning naming CUDA_DEVICE_ORDER says so.

    Raises ValueError, naming CUDA_VISIBLE_DEVICES, for an ordinal past the end of the mask, an
    entry that is neither an index nor a UUID, or a UUID NVML cannot resolve (unknown, or a
    prefix of several GPUs' UUIDs): sampling some other GPU instead would record wrong figures.
    Where NVML cannot be loaded at all, a UUID entry maps to its CUDA ordinal: the profiler
    then has no NVML either and records the GPU figures as missing, with the reason.
    """
    env = os.environ if env is None else env
    if not cuda_indices:
        return []
    visible = env.get("CUDA_VISIBLE_DEVICES", "")
    ids = [v.strip() for v in visible.split(",") if v.strip()]
    entries: list[str | int] = []
    for i in cuda_indices:
        if not ids:
            entries.append(i)  # no mask: every GPU visible, in CUDA's order
        elif i >= len(ids):
            raise ValueError(
                f"CUDA device {i} is past the end of CUDA_VISIBLE_DEVICES={visible!r} "
                f"({len(ids)} entries)"
            )
        elif ids[i].isdigit():
            entries.append(int(ids[i]))
        elif ids[i].startswith(("GPU-", "MIG-")):
            entries.append(ids[i])
        else:
            raise ValueError(
                f"CUDA_VISIBLE_DEVICES={visible!r}: entry {ids[i]!r} (CUDA device {i}) is neither "
                "an index nor a GPU-/MIG- UUID"
            )
    by_uuid = any(isinstance(e, str) for e in entries)
    check_order = (
        any(isinstance(e, int) for e in entries) and env.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID"
    )
    if nvml is None and (by_uuid or check_order):
        nvml, _ = load_nvml()
    if check_order and nvml is not None:
        _warn_if_mixed_models(nvml)
    out: list[int] = []
    for i, entry in zip(cuda_indices, entries, strict=True):
        if isinstance(entry, int):
            out.append(entry)
        elif nvml is None:
            out.append(i)
        else:
            try:
                out.append(_uuid_index(nvml, entry))
            except Exception as e:
                raise ValueError(
                    f"CUDA_VISIBLE_DEVICES={visible!r}: NVML cannot resolve {entry!r} "
                    f"(CUDA device {i}): {e}"
                ) from e
    return out


def _uuid_index(nvml: Any, entry: str) -> int:
    """NVML index of the GPU a CUDA_VISIBLE_DEVICES UUID entry names (for MIG, its parent)."""
    if entry.startswith("MIG-GPU-"):  # MIG-<GPU uuid>/<GPU instance>/<compute instance>
        return _gpu_uuid_index(nvml, entry.removeprefix("MIG-").split("/")[0])
    if entry.startswith("MIG-"):
        mig = nvml.nvmlDeviceGetHandleByUUID(entry)
        return nvml.nvmlDeviceGetIndex(nvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig))
    return _gpu_uuid_index(nvml, entry)


def _gpu_uuid_index(nvml: Any, uuid: str) -> int:
    try:
        return nvml.nvmlDeviceGetIndex(nvml.nvmlDeviceGetHandleByUUID(uuid))
    except Exception:
        # nvmlDeviceGetHandleByUUID wants the whole UUID; CUDA also takes a unique prefix
        matches = [
            i
            for i in range(nvml.nvmlDeviceGetCount())
            if as_str(nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(i))).startswith(uuid)
        ]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise LookupError(f"the UUIDs of GPUs {matches} all start with it") from None
        raise


def _warn_if_mixed_models(nvml: Any) -> None:
    """Warn where CUDA's default order (fastest first) may differ from NVML's (PCI bus)."""
    try:
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        names = sorted({as_str(nvml.nvmlDeviceGetName(h)) for h in handles})
    except Exception:
        return  # the names cannot be read: neither can the profiler's samples
    if len(names) > 1:
        warnings.warn(
            f"GPUs of different models ({', '.join(names)}) and CUDA_DEVICE_ORDER is not "
            "PCI_BUS_ID: CUDA numbers them fastest first, NVML by PCI bus, so the GPU sampled "
            "for power and energy may not be the one trained on; set "
            "CUDA_DEVICE_ORDER=PCI_BUS_ID (python -m launch does)",
            stacklevel=3,
        )
