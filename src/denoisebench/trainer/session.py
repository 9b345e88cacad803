"""One trainer process's run, in plain Python: what both trainers do alike, so that each keeps
only what is its own (building the model, the inner step loop, checkpoints, the gather across
processes).

    world = World.of(cfg, rank=..., processes=..., replicas=..., ...)   # where this process stands
    session = Session(FRAMEWORK, cfg, run_dir, world)                   # announces the run
    with session.running(gpus):                  # profiler; a failure is recorded, then raised
        data = session.load_data()
        session.begin(start_epoch, wall_time_s)  # after a restore: records past it dropped
        for epoch, order in session.epochs():    # the epoch's batch order, the same everywhere
            ...                                  # the framework's steps -> session.step_rows
            session.end_epoch(epoch, result, evaluate, save)  # rank 0: evaluate, record, save
        session.finish(weights, outputs, parameters)  # 'completed', or 'diverged' (below)

Rank 0 hands each epoch's records, checkpoint, summary, TensorBoard scalars and console line to
one background thread (trainer.writer) and trains the next epoch while they are written, in
that order. A checkpoint is written there from a copy of the state taken when the epoch ended
(PyTorch's), or, where saving needs the training thread (TensorFlow's: every process saves, with
collectives), by the training thread once the epoch's records are on disk. The run's end, a
failure and a stop signal wait for every write handed over before they record anything.

What survives a crash (SIGKILL mid-write): each file is written whole or not at all (records
appended and fsynced a line at a time, a cut line rolled back; JSON, arrays and checkpoints
renamed into place), and in the order above, so the run folder is always one that --resume
continues: at most the epoch being written is lost (its records without its checkpoint are
dropped on resume; a checkpoint whose summary still counts the epoch before resumes from the
checkpoint), as with inline writes; only, the training may then be an epoch ahead of its files.

A training loss that is not finite (nan, inf) in an epoch's gathered STEP rows ends the run after
that epoch, on every process alike: status 'diverged', one console line, exit code 1.

Typed records travel between the pieces: `World` (this process in the job, the summary's world
fields), `core.schema.StepRow` (one STEP row) and `EpochResult` (one epoch's rows, time and
profiler rows, one process's or, merged, the job's).
"""

from __future__ import annotations

import math
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from denoisebench.core.config import Config, ConfigError
from denoisebench.core.distributed import maybe_delay_after_eval, process_name
from denoisebench.core.epochs import (
    Measured,
    epoch_batches,
    epoch_line,
    final_summary,
    measured_fields,
    warmup_steps,
)
from denoisebench.core.records import (
    RunRecorder,
    read_json,
)
from denoisebench.core.schema import StepRow
from denoisebench.measure.conditions_nodes import NodeConditions
from denoisebench.measure.environment import environment
from denoisebench.measure.hardware import peak_flops
from denoisebench.measure.profiler import Profiler, maybe_profile
from denoisebench.measure.quality import TEST_FIELDS
from denoisebench.measure.rapl import rapl_root
from denoisebench.measure.tensorboard import EpochBoard
from denoisebench.trainer.process import record_failure, uninterrupted
from denoisebench.trainer.rundata import RunData, prepare_data
from denoisebench.trainer.writer import Job, Writer


@dataclass(frozen=True)
class World:
    """Where one trainer process stands in its job (schema.SUMMARY_FIELDS says what the
    recorded fields mean)."""

    rank: int
    """This process: the torch rank, or the TensorFlow worker index."""
    processes: int
    world_size: int
    """Replicas (devices) in the whole job."""
    local_replicas: int
    """Replicas this process drives: 1 under DDP, all of its devices under MirroredStrategy."""
    global_batch: int
    lr: float
    strategy: str
    engine: str
    """native (torchrun, tf.distribute) or horovod (horovodrun): the report's engine column."""
    device: str
    step_clock: str
    runtime: dict[str, Any]

    @classmethod
    def of(
        cls,
        cfg: Config,
        *,
        rank: int,
        processes: int,
        replicas: int,
        strategy: str,
        device: str,
        step_clock: str,
        runtime: dict[str, Any],
    ) -> World:
        """The world of a job of `replicas` devices over `processes` processes: the global
        batch is train.batch_size per device, the learning rate scaled by the replicas when
        train.scale_lr."""
        return cls(
            rank=rank,
            processes=processes,
            world_size=replicas,
            local_replicas=replicas // processes,
            global_batch=cfg.train.batch_size * replicas,
            lr=cfg.train.lr * (replicas if cfg.train.scale_lr else 1),
            strategy=strategy,
            engine="horovod" if strategy == "horovod" else "native",
            device=device,
            step_clock=step_clock,
            runtime=runtime,
        )

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the results folder and evaluates."""
        return self.rank == 0

    def summary_fields(self) -> dict[str, Any]:
        """The fields the run's summary.json records of its world."""
        fields = asdict(self)
        del fields["rank"], fields["local_replicas"]
        return fields


@dataclass
class EpochResult:
    """What one epoch's training steps measured: one process's, or (`merge`) the whole job's."""

    rows: list[StepRow]
    train_time_s: float
    devices: list[dict[str, Any]] = field(default_factory=list)
    """The profiler's rows, one per GPU (empty with the profiler off or without GPUs)."""
    hosts: list[dict[str, Any]] = field(default_factory=list)
    """The profiler's rows, one per process."""
    conditions: list[dict[str, Any]] = field(default_factory=list)
    """Run conditions of the nodes other than rank 0's, one summary per node, from the process
    that samples it (measure.conditions_nodes)."""

    @staticmethod
    def merge(parts: list[EpochResult]) -> EpochResult:
        """Every process's result as one: the job is as fast as its slowest process."""
        return EpochResult(
            rows=[r for p in parts for r in p.rows],
            train_time_s=max(p.train_time_s for p in parts),
            devices=[d for p in parts for d in p.devices],
            hosts=[h for p in parts for h in p.hosts],
            conditions=[c for p in parts for c in p.conditions],
        )

    def to_json(self) -> dict[str, Any]:
        """As plain JSON values, for collectives that carry bytes (TensorFlow's)."""
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> EpochResult:
        return cls(**obj | {"rows": [StepRow(**r) for r in obj["rows"]]})


class Session:
    """One trainer process's run: announce it, hold its data and profiler, keep the step count
    and the wall time across epochs, end each epoch and the run in the results folder and the
    TensorBoard events (rank 0 only: `rec` is None on the other processes), and record how it
    failed if it did.

    `every_process_saves`: the checkpoint is written by every process (TensorFlow's may need
    collectives; only the chief's copy is kept), in the training thread, not by rank 0 alone
    (PyTorch's, on the record writer)."""

    def __init__(
        self,
        framework: str,
        cfg: Config,
        run_dir: Path,
        world: World,
        every_process_saves: bool = False,
    ) -> None:
        self.framework, self.cfg, self.world = framework, cfg, world
        self.run_dir, self.fw_dir = Path(run_dir), Path(run_dir) / framework
        self.every_process_saves = every_process_saves
        self.rec = RunRecorder(run_dir, framework) if world.is_main else None
        self.writer = Writer() if self.rec else None
        """Rank 0's record writer (trainer.writer): the epochs' files, written in order while
        the next epoch trains; closed by running(), after every write handed to it."""
        self.tensorboard_skipped: str | None = None
        """Why no TensorBoard events are written though profiler.tensorboard is on (summary
        `tensorboard_skipped`); None when they are, or when it is off."""
        try:
            self.board = EpochBoard(
                self.fw_dir / "tensorboard", enabled=world.is_main and cfg.profiler.tensorboard
            )
        except ImportError as e:  # a GPU node's own environment may lack it: train without
            self.board = EpochBoard(self.fw_dir / "tensorboard", enabled=False)
            self.tensorboard_skipped = f"{e}"
        self.prof: Profiler | None = None
        self.conditions: NodeConditions | None = None
        """The run conditions of every node (measure.conditions_nodes), from begin() to the end:
        sampled by each node's first rank, summarised on rank 0."""
        self.gpus: list[int] = []
        """The NVML indices of the GPUs this process drives (running())."""
        self.data: RunData | None = None
        self.start_epoch, self.wall_time_s = 0, 0.0
        self.steps_per_epoch = 0
        self.steady_from = 0
        self._epoch_t0 = 0.0
        self.diverged: dict[str, Any] | None = None
        """Where the training loss first was not finite (summary `diverged_at`); None while
        every loss is finite. Set by end_epoch on every process: epochs() then ends."""
        self.diverged_error = ""
        if self.rec:
            self._announce(self.rec)

    def _announce(self, rec: RunRecorder) -> None:
        """What every run records as it starts: its environment, a 'running' summary, a line."""
        w = self.world
        rec.write_environment(environment(self.framework) | {"device": w.device})
        rec.summary(
            status="running",
            error=None,
            epochs=self.cfg.train.epochs,
            tensorboard_skipped=self.tensorboard_skipped,
            **w.summary_fields(),
        )
        if self.tensorboard_skipped:
            self.say(f"notice: no TensorBoard events: {self.tensorboard_skipped}")
        # rank 0 on SLURM's node 0 (core.placement): its host, to check against the node list
        where = f", rank 0 on {socket.gethostname()}" if w.processes > 1 else ""
        self.say(
            f"{w.strategy} on {w.device}: global batch {w.global_batch} "
            f"({self.cfg.train.batch_size} per device), lr {w.lr:g}{where}"
        )

    def say(self, line: str) -> None:
        """One line to the console, from rank 0 only."""
        if self.rec:
            print(f"[{self.framework}] {line}", flush=True)

    @property
    def process(self) -> str:
        """This process, as failures name it: 'torch', or 'torch rank 1', 'tf worker 1'."""
        return process_name(self.framework, self.world.rank, self.world.processes)

    @contextmanager
    def running(self, gpus: list[int]) -> Iterator[Profiler | None]:
        """The process's profiler over the run (maybe_profile; its GPU samples spooled into the
        run folder), and the failure guard: an exception, a stop signal included, is recorded
        (record_failure) and raised again, once every record handed to the writer is written."""
        spool = self.fw_dir / f"gpu_samples.rank{self.world.rank}.jsonl"
        if gpus:
            spool.parent.mkdir(parents=True, exist_ok=True)
        self.gpus = gpus
        try:
            with maybe_profile(
                self.cfg.profiler.enabled,
                devices=gpus,
                rank=self.world.rank,
                spool=spool,
                interval_s=self.cfg.profiler.sample_interval_s,
                min_window_s=self.cfg.profiler.min_window_s,
                rapl_root=rapl_root(),
            ) as prof:
                self.prof = prof
                yield prof
                if self.writer:
                    self.writer.close()  # a write that failed is raised, and recorded, here
        except BaseException as e:
            self._close_writer_after(e)
            record_failure(self.rec, e, self.fw_dir, self.process)
            raise
        finally:
            if self.conditions:
                self.conditions.stop()
            self.board.close()

    def _close_writer_after(self, e: BaseException) -> None:
        """Write what was handed over before `e` is recorded; a write that failed and was not
        raised yet is said in one line (`e` is what the run ended with)."""
        if self.writer is None:
            return
        self.writer.close(raise_failure=False)
        failed = self.writer.failure
        if failed is not None and failed is not e:
            print(
                f"[{self.framework}] writing the records failed too: {type(failed).__name__}: "
                f"{failed}",
                file=sys.stderr,
                flush=True,
            )

    def load_data(self) -> RunData:
        """The run's data (rundata.prepare_data; only rank 0 writes to the run folder)."""
        self.data = prepare_data(self.cfg, self.run_dir, is_main=self.world.is_main)
        return self.data

    def begin(
        self,
        start_epoch: int,
        wall_time_s: float,
        capture_step: int | None = None,
        hosts: list[str] | None = None,
    ) -> None:
        """Start training after `start_epoch` finished epochs (0, or a restored checkpoint's)
        and `wall_time_s` of them: records no checkpoint covers are dropped, and the process's
        first steps from here are warm-up again (core.epochs.warmup_steps; `capture_step`: the
        step that captures a CUDA graph). Opens the GPUs' idle-power window (it ends where the
        first epoch's training starts; nothing waits for it: Profiler.start_idle), then (each
        node's first rank) starts sampling the run's conditions until finish(). `hosts`: every
        process's host name in rank order, gathered by the trainer (this host alone when it
        is the only process)."""
        assert self.data is not None, "load_data() first"
        self.start_epoch, self.wall_time_s = start_epoch, wall_time_s
        self.steps_per_epoch = len(self.data.train_u8) // self.world.global_batch
        first = start_epoch * self.steps_per_epoch
        self.steady_from = first + warmup_steps(self.cfg, capture_step)
        self._keep_checkpointed(start_epoch)
        if self.rec:
            if start_epoch:
                self.say(f"resuming after epoch {start_epoch}")
            dropped = self.rec.truncate_after(start_epoch)
            if dropped:
                self.say(
                    f"dropping the records of {dropped} epoch(s) from epoch {start_epoch + 1} "
                    "on: no checkpoint this start restored covers them (an epoch cut short "
                    "before its checkpoint, or a start without --resume)"
                )
        if self.prof:
            self.prof.start_idle(self.cfg.profiler.idle_s)
        hosts = hosts or [socket.gethostname()]
        if len(hosts) != self.world.processes:
            raise ValueError(f"{len(hosts)} host names for {self.world.processes} processes")
        self.conditions = NodeConditions(
            self.fw_dir, self.run_dir, self.gpus, hosts, self.world.rank
        )
        # a resumed run's conditions cover its earlier attempts too
        self.conditions.start(resume=start_epoch > 0)

    def _keep_checkpointed(self, start_epoch: int) -> None:
        """Refuse a start that would drop epochs a checkpoint holds (ConfigError, on every
        process alike: each reads the same summary): a run started again without --resume
        over its own records, which would lose them. The summary's epochs_completed counts
        the epochs checkpointed (end_epoch sets it after the checkpoint is written)."""
        try:
            done = int(read_json(self.fw_dir / "summary.json").get("epochs_completed") or 0)
        except (OSError, ValueError):
            return
        checkpoints = self.fw_dir / "checkpoints"
        if done > start_epoch and checkpoints.is_dir() and any(checkpoints.iterdir()):
            raise ConfigError(
                f"{self.fw_dir}: {done} finished epoch(s) are recorded and checkpointed, but "
                f"this start begins after epoch {start_epoch} and would drop them; continue "
                "the run with --resume, or train a new run"
            )

    def epochs(self) -> Iterator[tuple[int, np.ndarray]]:
        """Each epoch left, with its batch order (steps x global batch indices, the same on
        every process: core.epochs.epoch_batches). The run's wall time counts from here. None
        after an epoch that diverged (end_epoch)."""
        assert self.data is not None, "load_data() first"
        for epoch in range(self.start_epoch, self.cfg.train.epochs):
            if self.diverged is not None:
                return
            order = epoch_batches(
                len(self.data.train_u8), self.world.global_batch, self.cfg.train.seed, epoch
            )
            self._epoch_t0 = time.perf_counter()
            yield epoch, np.stack(order)

    def first_step(self, epoch: int) -> int:
        """The global step number of the epoch's first step."""
        return epoch * self.steps_per_epoch

    def step_rows(
        self, epoch: int, losses: list[float], step_times: list[float], waits: list[float]
    ) -> list[StepRow]:
        """This process's STEP rows of an epoch, from its per-step losses and times."""
        first, w = self.first_step(epoch), self.world
        return [
            StepRow(
                framework=self.framework,
                epoch=epoch,
                step=first + i,
                rank=w.rank,
                replicas=w.local_replicas,
                batch_size=self.cfg.train.batch_size * w.local_replicas,
                loss=loss,
                step_time_s=step_time,
                warmup=first + i < self.steady_from,
                data_wait_s=wait,
            )
            for i, (loss, step_time, wait) in enumerate(zip(losses, step_times, waits, strict=True))
        ]

    def end_epoch(
        self,
        epoch: int,
        result: EpochResult,
        evaluate: Callable[[], dict[str, float]],
        save: Callable[[int, float], Job | None],
    ) -> None:
        """After an epoch's steps (`result`: the whole job's), on rank 0: evaluate on the test
        split, then hand the epoch's records, checkpoint, summary (the epoch marked done) and
        line to the record writer, in that order (records before the checkpoint: a resume drops
        records no checkpoint covers). A stop signal meanwhile waits until all of that is handed
        over (uninterrupted), and the run's end until it is written (running).

        `evaluate` returns the EPOCH record's test figures (measure.quality.epoch_scores),
        reduced on the device. `save(epochs_done, wall_time_s)` saves the checkpoint: with
        every_process_saves on every process, in this thread, once the epoch's records are
        written; else on rank 0 alone, returning the write (of a copy of the state taken now)
        that the record writer then runs.

        A loss in `result` that is not finite ends the run here instead (diverge): every process
        sees the same rows, so all stop after this epoch."""
        if self.conditions and self.rec:
            self.conditions.take(result.conditions)
        bad = first_non_finite(result.rows)
        if bad is not None:
            self.diverge(epoch, bad, result)
            return
        if self.rec is None:
            if self.every_process_saves:
                with uninterrupted():
                    save(epoch + 1, self.wall_time_s)
            return
        t_eval = time.perf_counter()
        scores = evaluate()
        maybe_delay_after_eval()
        eval_time_s = time.perf_counter() - t_eval  # the quality figures included
        steps = [asdict(r) for r in result.rows]
        record = epoch_record(
            self.framework,
            epoch,
            steps,
            result.train_time_s,
            eval_time_s,
            scores,
            measured(self.cfg, result.devices, result.hosts, self.world.world_size)
            if self.prof
            else None,
        )
        self.wall_time_s += time.perf_counter() - self._epoch_t0
        with uninterrupted():
            self._hand_over(epoch, record, steps, result, save)

    def _hand_over(
        self,
        epoch: int,
        record: dict[str, Any],
        steps: list[dict[str, Any]],
        result: EpochResult,
        save: Callable[[int, float], Job | None],
    ) -> None:
        """Rank 0's writes of an epoch, to the record writer in their order: the records, the
        checkpoint, the summary that counts the epoch, the TensorBoard scalars, the line."""
        rec, writer, board = self.rec, self.writer, self.board
        assert rec is not None and writer is not None
        writer.submit(lambda: rec.epoch(record, steps, result.devices, result.hosts))
        write_checkpoint = None
        if self.every_process_saves:
            writer.drain()  # the records on disk before the checkpoint, as for the others
            save(epoch + 1, self.wall_time_s)
        else:
            write_checkpoint = save(epoch + 1, self.wall_time_s)
        summary = {"epochs_completed": epoch + 1, **self.conditions_fields()}
        line = epoch_line(record, self.cfg.train.epochs)

        def the_rest() -> None:
            if write_checkpoint is not None:
                write_checkpoint()
            rec.summary(**summary)
            board.write(record)
            print(line, flush=True)  # the epoch is on disk

        writer.submit(the_rest)

    def diverge(self, epoch: int, row: StepRow, result: EpochResult) -> None:
        """The epoch's first loss that is not finite (`row`): note it, so that epochs() ends the
        run; on rank 0, record the epoch's STEP and profiler rows (no EPOCH record and no
        checkpoint: a model that diverged is neither evaluated nor saved) and say so, once."""
        in_epoch = row.step - self.first_step(epoch) + 1
        process = "rank" if self.framework == "torch" else "worker"  # as process_name says
        on_rank = f" on {process} {row.rank}" if self.world.processes > 1 else ""
        self.diverged = {"epoch": epoch, "step": row.step, "rank": row.rank, "loss": str(row.loss)}
        self.diverged_error = (
            f"loss is {row.loss} at epoch {epoch + 1}, step {in_epoch} of "
            f"{self.steps_per_epoch}{on_rank} (steps.jsonl: epoch {epoch}, step {row.step})"
        )
        self.wall_time_s += time.perf_counter() - self._epoch_t0
        rec, writer = self.rec, self.writer
        if rec is None or writer is None:
            return
        rows = [asdict(r) for r in result.rows]
        line = f"[{self.framework}] diverged: {self.diverged_error}; stopping"

        def write() -> None:
            rec.epoch(None, rows, result.devices, result.hosts)
            print(line, flush=True)

        with uninterrupted():
            writer.submit(write)

    def finish(
        self, weights: list[Any], outputs: np.ndarray | None, parameters: int
    ) -> dict[str, Any]:
        """On rank 0, the run's end, once every epoch's writes are done: the final weights
        (canonical layout), the outputs for the report's test samples (NHWC; None on the other
        processes), and the 'completed' summary, returned. After an epoch that diverged, the
        'diverged' summary instead (returned on every process)."""
        if self.writer:
            self.writer.drain()
        if self.diverged is not None:
            summary = {
                "status": "diverged",
                "error": self.diverged_error,
                "diverged_at": self.diverged,
                "epochs_completed": self.diverged["epoch"],  # the epochs before it
                "wall_time_s": self.wall_time_s,
            }
            if self.rec:
                self.rec.summary(**summary, **self.conditions_fields(stop=True))
            return summary
        if self.rec is None:
            return {}
        assert self.data is not None and outputs is not None
        self.rec.write_weights(weights)
        self.rec.write_outputs(outputs)
        summary = final_summary(
            self.rec,
            self.wall_time_s,
            parameters,
            self.data.description,
            self.world.summary_fields(),
        ) | self.conditions_fields(stop=True)
        self.rec.summary(**summary)
        return summary

    def conditions_fields(self, stop: bool = False) -> dict[str, Any]:
        """The summary's `conditions` (every node's), `disturbed` and `disturbed_reasons` so far
        (rank 0, after begin(); none otherwise); `stop`: the sampling ends here, at the run's
        end."""
        return self.conditions.fields(stop=stop) if self.conditions else {}

    def node_conditions(self) -> list[dict[str, Any]]:
        """This process's part of an epoch's EpochResult.conditions: its node's summary where
        it samples a node other than rank 0's, else nothing."""
        return self.conditions.for_gather() if self.conditions else []


def first_non_finite(rows: list[StepRow]) -> StepRow | None:
    """The first STEP row, by step then rank, whose loss is not finite; None when all are."""
    bad = [r for r in rows if not math.isfinite(r.loss)]
    return min(bad, key=lambda r: (r.step, r.rank)) if bad else None


def peak_precision(cfg: Config) -> str:
    """The hardware.py precision a run's convolutions use: its mixed-precision dtype, else
    TF32 or plain float32."""
    if cfg.runtime.precision != "float32":
        return {"bfloat16": "bf16", "float16": "fp16", "float64": "fp64"}[cfg.runtime.precision]
    return "tf32" if cfg.runtime.tf32 else "fp32"


def measured(
    cfg: Config, devices: list[dict[str, Any]], hosts: list[dict[str, Any]], world_size: int
) -> Measured:
    """Bundle an epoch's gathered profiler rows with what MFU needs (precision, peak)."""
    precision = peak_precision(cfg)
    name = devices[0]["device_name"] if devices else None
    peak, reason = peak_flops(name, precision)
    return Measured(
        devices=devices,
        hosts=hosts,
        warmup_steps=cfg.profiler.warmup_steps,
        flops_per_image=3.0 * cfg.model.forward_flops_per_image(),
        peak_flops=peak,
        peak_reason=reason,
        world_size=world_size,
    )


def epoch_record(
    framework: str,
    epoch: int,
    steps: list[dict[str, Any]],
    train_time_s: float,
    eval_time_s: float,
    scores: dict[str, float],
    measured: Measured | None = None,
) -> dict[str, Any]:
    """The EPOCH record (schema.EPOCH_FIELDS) from every rank's STEP records of the epoch and
    the test figures (`scores`: measure.quality.epoch_scores, the TEST_FIELDS).

    train_time_s is the slowest rank's, so the throughput is what the whole job achieved.
    """
    images = sum(r["batch_size"] for r in steps)
    return {
        "framework": framework,
        "epoch": epoch,
        "steps": len({r["step"] for r in steps}),
        "train_loss": float(
            np.average([r["loss"] for r in steps], weights=[r["batch_size"] for r in steps])
        ),
        **{name: float(scores[name]) for name in TEST_FIELDS},
        "train_time_s": train_time_s,
        "eval_time_s": eval_time_s,
        "throughput_img_s": images / train_time_s if train_time_s > 0 else None,
        **measured_fields(steps, measured),
    }
