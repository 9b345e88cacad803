"""SLURM: submitit parameters, built by pure functions; submission in one place.

Two ways onto a cluster, the same training underneath:

- `python -m launch --slurm ...` submits through submitit: one task per device for PyTorch
  (submitit exports the torch.distributed environment), one task per node (or per CPU worker)
  for TensorFlow; preemption and time limits requeue through submitit's checkpoint().
- `sbatch slurm/torch.sbatch` / `slurm/tf.sbatch`: readable scripts that run the same launcher
  once per node (launch/sbatch.py renders them; --sbatch-out writes one).

What is asked for, SlurmRequest, and the checks of each value: launch/slurm_options.py.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from denoisebench.core.config import Config, ConfigError
from denoisebench.core.failures import mark_failed
from denoisebench.core.records import atomic_write_text, read_summary
from denoisebench.core.runlock import RunLocked
from denoisebench.core.sweep import SweepElement
from launch.options import prog
from launch.sbatch import render_sbatch
from launch.slurm_options import SlurmRequest, sbatch_options, time_minutes


def tasks_per_node(framework: str, req: SlurmRequest) -> int:
    """PyTorch and Horovod: a task per device. TensorFlow: a task per node drives its GPUs; on
    CPUs each worker is a task."""
    return req.devices if framework == "torch" or req.engine == "horovod" or not req.gpus else 1


def devices_per_task(framework: str, req: SlurmRequest) -> int:
    """What each submitit task drives: TensorFlow's task its node's GPUs, else one device."""
    return req.devices if tasks_per_node(framework, req) == 1 else 1


def submitit_params(framework: str, req: SlurmRequest) -> dict[str, Any]:
    """Parameters for submitit.AutoExecutor.update_parameters; a value the request leaves
    None (the partition, QOS...) is left out: SLURM's default."""
    params: dict[str, Any] = {
        "name": f"denoisebench-{framework}",
        "timeout_min": time_minutes(req.time),
        "nodes": req.nodes,
        "tasks_per_node": tasks_per_node(framework, req),
        "cpus_per_task": req.cpus_per_task,
        "slurm_signal_delay_s": req.signal_delay_s,
    }
    if req.gpus:
        # every task sees all of its node's GPUs and picks its own (LOCAL_RANK, or all of them
        # for a TensorFlow worker), so no per-task GPU binding is asked for
        params["gpus_per_node"] = req.devices
    for field in ("partition", "account", "qos", "constraint", "mem"):
        if getattr(req, field) is not None:
            params[f"slurm_{field}"] = getattr(req, field)
    if req.extra:  # submitit writes True as a flag: #SBATCH --exclusive
        params["slurm_additional_parameters"] = {k: True if v is None else v for k, v in req.extra}
    return params


def submit(
    framework: str,
    req: SlurmRequest,
    run_dir: Path,
    log_dir: Path,
    resume: bool = False,
    master_port: int | None = None,
) -> Any:
    """Submit one framework's training through submitit; return the job. `resume`: continue
    from the run's last checkpoint (a task that does not resume starts the run over).
    `master_port`: --master-port (None: the job's tasks derive it from its job id)."""
    import submitit

    from denoisebench.cluster.slurm_job import TrainTask

    executor = submitit.AutoExecutor(folder=log_dir)
    executor.update_parameters(**submitit_params(framework, req))
    task = TrainTask(
        framework,
        run_dir,
        devices_per_task=devices_per_task(framework, req),
        master_port=master_port,
        resume=resume,
        launcher=prog(),
        engine=req.engine,
    )
    return executor.submit(task)


def submit_array(framework: str, req: SlurmRequest, run_dirs: list[Path], log_dir: Path) -> list:
    """Submit one job array (submitit batch) training `framework` into each of run_dirs."""
    import submitit

    from denoisebench.cluster.slurm_job import TrainTask

    executor = submitit.AutoExecutor(folder=log_dir)
    executor.update_parameters(**submitit_params(framework, req))
    per_task = devices_per_task(framework, req)
    with executor.batch():
        jobs = [
            executor.submit(TrainTask(framework, d, devices_per_task=per_task, launcher=prog()))
            for d in run_dirs
        ]
    return jobs


# --- what the launcher's --slurm, --sbatch-out and --sweep --slurm do ----------------------


def slurm_request(args: argparse.Namespace) -> SlurmRequest:
    """The request the SLURM options ask for; ConfigError for a value SlurmRequest refuses."""
    return SlurmRequest(
        nodes=args.nodes or 1,
        devices=args.gpus or 1,
        gpus=not args.cpu_workers,
        partition=args.partition,
        time=args.time,
        account=args.account,
        qos=args.qos,
        constraint=args.constraint,
        mem=args.mem,
        cpus_per_task=args.cpus_per_task,
        extra=sbatch_options(args.sbatch_option),
        engine=args.engine,
    )


def check_slurm_options(args: argparse.Namespace) -> None:
    """With --slurm or --sbatch-out, refuse (ConfigError) a SLURM option that SLURM would not
    take or that could break out of its line in a script, before anything is written. submitit
    writes --results into its script too (the log folder), so it must be one line."""
    if not (args.slurm or args.sbatch_out):
        return
    if args.slurm and args.repeats != 1 and not args.sweep:
        raise ConfigError("--repeats with --slurm: submit a sweep instead (--sweep)")
    slurm_request(args)  # SlurmRequest checks its values
    if args.slurm:
        time_minutes(args.time)  # submitit takes minutes: no UNLIMITED
        for option, path in (("--results", args.results), ("--resume", args.resume)):
            if path is not None and any(ord(c) < 32 or ord(c) == 127 for c in str(path)):
                raise ConfigError(f"{option} {str(path)!r}: a control character (a newline?)")


def write_sbatch(args: argparse.Namespace) -> int:
    frameworks = ["torch", "tf"] if args.framework == "both" else [args.framework]
    if len(frameworks) > 1:
        raise ConfigError("--sbatch-out writes one script: pick --framework torch or tf")
    atomic_write_text(args.sbatch_out, render_sbatch(frameworks[0], slurm_request(args)))
    print(f"wrote {args.sbatch_out}: submit it with sbatch {args.sbatch_out}")
    return 0


def submit_to_slurm(args: argparse.Namespace, frameworks: list[str], run_dir: Path) -> int:
    """Submit each framework through submitit; with --wait, wait (to a deadline) and report.
    sbatch refusing a job (no controller to reach, a partition it does not know) ends it in one
    line; a new run's folder is removed when no job of it was submitted."""
    req = slurm_request(args)
    log_dir = run_dir / "slurm-logs"
    resume = args.resume is not None
    jobs = []
    for framework in frameworks:
        summary = read_summary(run_dir, framework) if resume else None
        if summary and summary.get("status") == "completed":
            print(f"[{framework}] already completed, skipping", flush=True)
            continue
        try:
            job = submit(framework, req, run_dir, log_dir, resume, master_port=args.master_port)
        except (OSError, RuntimeError) as e:  # submitit's FailedJobError is a RuntimeError
            return submit_failed(framework, e, run_dir, new_run=not resume and not jobs)
        print(f"[{framework}] submitted SLURM job {job.job_id}; logs: {log_dir}", flush=True)
        jobs.append((framework, job))
    if not args.wait:
        return 0
    failed = wait_for_jobs([(fw, run_dir, job) for fw, job in jobs], args.wait_timeout)
    from denoisebench.report.compare import comparison_table  # pandas: only at the end

    print()
    print(comparison_table(run_dir))
    print(f"\nresults: {run_dir}")
    return 1 if failed else 0


def submit_failed(framework: str, error: Exception, run_dir: Path, new_run: bool) -> int:
    """One line for a job sbatch refused, with sbatch's own words; a new run's folder, with
    no job submitted into it, is removed (exit 1)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    said = next((line for line in lines if "error" in line.lower()), lines[0] if lines else "")
    where = f"; {run_dir} removed (nothing was submitted)" if new_run else ""
    if new_run:
        shutil.rmtree(run_dir, ignore_errors=True)
    print(f"error: SLURM did not take the {framework} job: {said}{where}", file=sys.stderr)
    return 1


def wait_for_jobs(jobs: list[tuple[str, Path, Any]], timeout_s: float) -> list[str]:
    """Wait for submitit jobs, to a deadline; record failures in their run folders. Returns the
    frameworks whose job failed or whose run diverged."""
    deadline = time.monotonic() + timeout_s
    failed = []
    for framework, run_dir, job in jobs:
        while not job.done():
            if time.monotonic() > deadline:
                print(
                    f"[{framework}] job {job.job_id} still {job.state} after "
                    f"{timeout_s:.0f}s: stopped waiting",
                    file=sys.stderr,
                )
                return [*failed, framework]
            time.sleep(2)
        try:
            results = job.results()
            diverged = [r for r in results if isinstance(r, dict) and r.get("status") == "diverged"]
            if diverged:  # the summary says so already: not a failure of the job to record
                failed.append(framework)
                print(
                    f"[{framework}] job {job.job_id} diverged: {diverged[0].get('error')}",
                    file=sys.stderr,
                )
                continue
            print(f"[{framework}] job {job.job_id} finished: {job.state}", flush=True)
        except Exception as e:  # submitit raises FailedJobError / UncompletedJobError
            failed.append(framework)
            message = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            print(
                f"[{framework}] job {job.job_id} failed ({job.state}): {message}", file=sys.stderr
            )
            if RunLocked.__name__ not in str(e):  # refused: the run's records are another's
                mark_failed(run_dir, framework, f"SLURM job {job.job_id} {job.state}: {message}")
    return failed


def submit_sweep(
    args: argparse.Namespace,
    sweep_dir: Path,
    elements: list[SweepElement],
    configs: dict[str, Config],
) -> int:
    """One submitit job array per (framework, devices): their tasks per node differ."""
    groups: dict[tuple[str, int], list[SweepElement]] = {}
    for el in elements:
        groups.setdefault((el.framework, el.devices), []).append(el)
        (sweep_dir / el.name).mkdir()
        atomic_write_text(sweep_dir / el.name / "config.json", configs[el.name].to_json() + "\n")
    jobs = []
    for (framework, devices), group in groups.items():
        req = replace(slurm_request(args), devices=devices)
        array = submit_array(
            framework, req, [sweep_dir / el.name for el in group], sweep_dir / "slurm-logs"
        )
        for el, job in zip(group, array, strict=True):
            print(f"[{el.name}] SLURM job {job.job_id}", flush=True)
            jobs.append((el, job))
    print(f"logs: {sweep_dir / 'slurm-logs'}", flush=True)
    if not args.wait:
        return 0
    failed = wait_for_jobs(
        [(el.framework, sweep_dir / el.name, job) for el, job in jobs], args.wait_timeout
    )
    print()
    from denoisebench.report.compare import sweep_table  # pandas: only at the end

    print(sweep_table(sweep_dir, elements))
    return 1 if failed else 0
