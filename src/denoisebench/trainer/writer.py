"""The one background thread that writes rank 0's records while the next epoch trains.

    writer = Writer()
    writer.submit(job)   # a job: a function of no arguments; jobs run one at a time, in order
    writer.drain()       # wait until every job submitted so far has run
    writer.close()       # drain, then end the thread (a second call does nothing)

One thread and one queue, so the files are written in the order the epochs handed them over,
exactly as they were written inline: each epoch's records, then its checkpoint, then the summary
that counts it (trainer.session). A job that fails (a full disk) stops the writer: the jobs
after it are dropped, never run (a checkpoint is never written after records that failed), and
the error is raised in the training thread by the next submit(), drain() or close(). Stop
signals reach the training thread only (Python runs signal handlers there), so a write in
progress is never cut by one; the training thread closes the writer before it records how the
run ended (Session.running), so every epoch handed over is on disk by then.

What a SIGKILL leaves: whatever the jobs had written when it came, in their order. The files
themselves are as crash-safe as inline (appended lines fsynced, JSON, checkpoints and arrays
renamed into place), so the run folder is in one of the states an inline crash could leave, at
most one epoch behind the training: records without their checkpoint (dropped on --resume) or a
checkpoint whose summary still counts the epoch before (--resume starts from the checkpoint).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

Job = Callable[[], None]


class Writer:
    """A single daemon thread running submitted jobs in order (see the module docstring),
    started by the first submit()."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._error: BaseException | None = None
        self._raised = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="record-writer", daemon=True)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                if self._error is None:  # after a failure, later jobs are dropped
                    job()
            except BaseException as e:  # handed to the training thread
                self._error = e
            finally:
                self._jobs.task_done()

    def submit(self, job: Job) -> None:
        """Queue `job` after the others (raising an earlier job's failure first)."""
        self._raise_failure()
        if self._closed:
            raise RuntimeError("the record writer is closed")
        if not self._thread.is_alive():
            self._thread.start()
        self._jobs.put(job)

    def drain(self) -> None:
        """Wait until every job submitted so far has run; raise the failure of one that failed."""
        self._jobs.join()
        self._raise_failure()

    def close(self, raise_failure: bool = True) -> None:
        """Drain and end the thread. `raise_failure` False: a failure not raised yet is left
        unraised (the caller is handling another exception already)."""
        self._closed = True
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()
        if raise_failure:
            self._raise_failure()

    @property
    def failure(self) -> BaseException | None:
        """The exception a job raised, if one did and it has not been raised here yet."""
        return None if self._raised else self._error

    def _raise_failure(self) -> None:
        if self._error is not None and not self._raised:
            self._raised = True
            raise self._error
