"""TensorBoard event files from the EPOCH records: one tag scheme for both frameworks.

Each trainer hands its EPOCH record (core/records.py EPOCH_FIELDS, a plain dict) to an
`EpochBoard` writing into `results/<run-id>/<framework>/tensorboard/`, so

    tensorboard --logdir results/<run-id>

shows the runs `torch/tensorboard` and `tf/tensorboard` on the same charts (TAGS). The step is
the number of finished epochs (epoch + 1). A field that is missing or None (no GPU, profiler
off) writes nothing under its tag, never a NaN or a 0.

Framework-free: the events are written with tensorboard's record format and protos only.
`tensorboard.summary.writer.event_file_writer.EventFileWriter` is not used because it creates
its folder and file through `tensorboard.compat.tf`, which imports TensorFlow when it is
installed, and a PyTorch run must not import TensorFlow.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from denoisebench.core.schema import EPOCH_FIELDS

TAGS: dict[str, str] = {
    "train_loss": "loss/train",
    "test_loss": "loss/test",
    "test_psnr_db": "quality/psnr_db",
    "test_ssim": "quality/ssim",
    "test_mae": "quality/mae",
    "throughput_img_s": "speed/img_s",
    "throughput_steady_img_s": "speed/steady_img_s",
    "gpu_power_mean_w": "gpu/power_w",
    "gpu_energy_j": "gpu/energy_j",
    "gpu_mem_alloc_peak_gib": "gpu/mem_alloc_peak_gib",
    "gpu_mem_used_peak_gib": "gpu/mem_used_peak_gib",
}
"""EPOCH record field -> TensorBoard tag (units in the tag, as in the field)."""

_DESCRIPTIONS = {tag: EPOCH_FIELDS[field] for field, tag in TAGS.items()}
# Two boards opened in the same second get two files, named in the order they were opened.
_file_ids = itertools.count()


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The tags an EPOCH record writes and their values; missing and None fields are left out."""
    return {tag: float(record[f]) for f, tag in TAGS.items() if record.get(f) is not None}


class EpochBoard:
    """Writes one event file of per-epoch scalars (TAGS) into `folder`.

    Construct it on the main process only (torch rank 0, TensorFlow worker 0), call `write`
    once per finished epoch, and `close` at the end (or use it as a context manager). Each
    `write` is flushed to disk, so TensorBoard shows a running job. With `enabled=False` it
    writes nothing and needs no tensorboard package.

    Resume: a resumed run opens a new event file beside the old one (the file names start with
    the time, so TensorBoard reads it last). Its first event is a SessionLog START at the first
    step it writes, and TensorBoard drops the earlier file's points from that step on (its data
    server does so for any step that goes back): the resumed run's values win, and the curve
    equals an uninterrupted run's.
    """

    def __init__(self, folder: Path | str, enabled: bool = True) -> None:
        self.folder = Path(folder)
        self.enabled = enabled
        self.path: Path | None = None
        self._started = False
        self._described: set[str] = set()
        if not enabled:
            return
        try:
            from tensorboard.compat.proto import event_pb2, summary_pb2
            from tensorboard.summary.writer.record_writer import RecordWriter
        except ImportError as e:
            raise ImportError(
                f"the `tensorboard` package is not installed ({e.name or e}): `pip install "
                "tensorboard` writes them; --set profiler.tensorboard=false silences this"
            ) from e
        self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / (
            f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
            f"{os.getpid()}.{next(_file_ids):04d}"
        )
        self._file = open(self.path, "xb")  # noqa: SIM115 - held open until close()
        self._records = RecordWriter(self._file)
        self._add(
            event_pb2.Event(
                wall_time=time.time(),
                file_version="brain.Event:2",
                source_metadata=event_pb2.SourceMetadata(writer="denoisebench"),
            )
        )
        self._flush()

    def write(self, record: dict[str, Any]) -> None:
        """Add one EPOCH record's scalars at step epoch + 1, and flush them to disk."""
        if not self.enabled:
            return
        step = int(record["epoch"]) + 1
        now = time.time()
        if not self._started:
            # Drops the points an earlier attempt of a resumed run wrote from this step on.
            log = self._event_pb2.SessionLog(status=self._event_pb2.SessionLog.START)
            self._add(self._event_pb2.Event(wall_time=now, step=step, session_log=log))
            self._started = True
        values = []
        for tag, value in scalars(record).items():
            v = self._summary_pb2.Summary.Value(tag=tag, simple_value=value)
            if tag not in self._described:  # TensorBoard keeps a tag's first metadata
                v.metadata.summary_description = _DESCRIPTIONS[tag]
                self._described.add(tag)
            values.append(v)
        if values:
            summary = self._summary_pb2.Summary(value=values)
            self._add(self._event_pb2.Event(wall_time=now, step=step, summary=summary))
        self._flush()

    def close(self) -> None:
        """Flush and close the event file; a second call does nothing."""
        if self.enabled and not self._file.closed:
            self._flush()
            self._records.close()

    def __enter__(self) -> EpochBoard:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _add(self, event: Any) -> None:
        self._records.write(event.SerializeToString())

    def _flush(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())  # a TensorBoard on another node reads a shared file system
