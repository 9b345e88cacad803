"""SLURM: submitit parameters and sbatch scripts, built by pure functions; submission in one place.

Two ways onto a cluster, the same training underneath:

- `python -m launch --slurm ...` submits through submitit: one task per device for PyTorch
  (submitit exports the torch.distributed environment), one task per node (or per CPU worker)
  for TensorFlow; preemption and time limits requeue through submitit's checkpoint().
- `sbatch slurm/torch.sbatch` / `slurm/tf.sbatch`: readable scripts that run the same launcher
  once per node (`srun --ntasks-per-node=1 python -m launch ... --auto-resume`); a USR1 trap
  requeues the job before its time limit, and the requeued job resumes.

What is asked for, SlurmRequest, and the checks of each value: launch/slurm_options.py.
"""

from __future__ import annotations

import argparse
import shlex
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
from denoisebench.report.compare import comparison_table, sweep_table
from launch.options import prog
from launch.slurm_options import SlurmRequest, sbatch_options, time_minutes

SLURM_DIR = Path(__file__).resolve().parents[1] / "slurm"


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


def sbatch_lines(framework: str, req: SlurmRequest) -> list[str]:
    """The script's #SBATCH options, in the order they are written; each value shell-quoted
    (sbatch reads quotes in #SBATCH lines as a shell would, as it does in submitit's)."""
    lines = [f"--job-name=denoisebench-{framework}"]
    if req.partition is not None:
        lines.append(f"--partition={shlex.quote(req.partition)}")
    lines += [f"--nodes={req.nodes}", "--ntasks-per-node=1", f"--cpus-per-task={req.cpus_per_task}"]
    if req.gpus:
        lines.append(f"--gpus-per-node={req.devices}")
    for field in ("account", "qos", "constraint", "mem"):
        if getattr(req, field) is not None:
            lines.append(f"--{field}={shlex.quote(getattr(req, field))}")
    lines += [
        f"--time={shlex.quote(req.time)}",
        "--output=slurm-logs/%x-%j.out",
        "--open-mode=append",
        f"--signal=B:USR1@{req.signal_delay_s}",
        "--requeue",
    ]
    lines += [f"--{k}" if v is None else f"--{k}={shlex.quote(v)}" for k, v in req.extra]
    return [f"#SBATCH {line}" for line in lines]


def render_sbatch(framework: str, req: SlurmRequest) -> str:
    """The sbatch script for `framework`; slurm/<framework>.sbatch is this with the defaults."""
    name = {
        "torch": "PyTorch (DDP under torchrun)",
        "tf": "TensorFlow (MultiWorkerMirroredStrategy across nodes)",
    }[framework]
    if req.engine == "horovod":
        name = f"{'PyTorch' if framework == 'torch' else 'TensorFlow'} under Horovod (Gloo)"
    header = "\n".join(sbatch_lines(framework, req))
    return f"""#!/bin/bash
# Train the denoising autoencoder with {name} on SLURM.
#
#   mkdir -p slurm-logs && sbatch slurm/{framework}.sbatch
#
# Run from the repository (the job cds to the folder it was submitted from). Change the
# allocation in the #SBATCH lines below, or on the command line: sbatch --nodes 4 ... Logs go to
# slurm-logs/ next to the repository, which every node must see, as must the results folder.
# Without a --partition line the job goes to SLURM's default partition.
#
# Environment (export before sbatch):
#   DEVICES_PER_NODE     devices per node, to override what SLURM says (default: the GPUs
#                        SLURM gives each node, from --gpus-per-node; else {req.devices})
#   DENOISEBENCH_ARGS    more `python -m launch` options, split into words at blanks (no
#                        quotes, no globbing), e.g. "--profile paper --data /data/EuroSAT.zip"
#                        (or give them after the script's name: sbatch slurm/{framework}.sbatch
#                        --profile paper --data "/data/Euro SAT.zip")
#   DENOISEBENCH_RESULTS results folder on a shared file system (default: results)
#   DENOISEBENCH_PYTHON  the Python to run (default: .venv/bin/python)
#   DENOISEBENCH_MAX_REQUEUES  how often a failed step requeues the job (default: 2)
#
# Before the time limit SLURM sends USR1; the trap requeues the job, and the requeued job
# resumes the same run (results/slurm-<job id>) from its last finished epoch. A step that fails
# (a node lost, a process killed) ends within the collective timeout plus 15 s and requeues the
# job the same way.
{header}
{script_body(framework, req.devices, req.engine)}"""


def script_body(framework: str, devices: int, engine: str = "native") -> str:
    """The commands of the sbatch script: devices per node, the requeue trap, one launcher per
    node, and a requeue when the step failed; `devices`: the count when neither
    DEVICES_PER_NODE nor SLURM names one."""
    return _setup_lines(devices) + _step_lines(framework, engine) + _requeue_lines(framework)


def _setup_lines(devices: int) -> str:
    """Paths, devices per node (`devices` when neither DEVICES_PER_NODE nor SLURM names one),
    the USR1 trap, the extra options."""
    return f"""
set -euo pipefail
cd "${{SLURM_SUBMIT_DIR:-.}}"
export PYTHONUNBUFFERED=1
PYTHON="${{DENOISEBENCH_PYTHON:-.venv/bin/python}}"
RESULTS="${{DENOISEBENCH_RESULTS:-results}}"

# Devices per node: DEVICES_PER_NODE, else the GPUs SLURM gave this node (SLURM_GPUS_ON_NODE;
# else --gpus-per-node's count, SLURM_GPUS_PER_NODE, which may name a type: a100:4), else {devices}
GPUS="${{SLURM_GPUS_ON_NODE:-${{SLURM_GPUS_PER_NODE:-}}}}"
GPUS="${{GPUS##*:}}"
[ "$GPUS" != 0 ] || GPUS=""
DEVICES="${{DEVICES_PER_NODE:-${{GPUS:-{devices}}}}}"
case "$DEVICES" in
    "" | 0 | *[!0-9]*)
        echo "devices per node: '$DEVICES' is not a count of devices; set DEVICES_PER_NODE" >&2
        exit 2 ;;
esac

requeue() {{
    echo "$(date -u +%FT%TZ) USR1: time limit or preemption near, requeueing ${{SLURM_JOB_ID}}"
    scontrol requeue "${{SLURM_JOB_ID}}"
}}
trap requeue USR1

# DENOISEBENCH_ARGS as words, never as shell code; ${{EXTRA[@]+...}}: nothing when empty,
# which `set -u` allows on bash before 4.4 too
read -ra EXTRA <<< "${{DENOISEBENCH_ARGS:-}}"
"""


def _step_lines(framework: str, engine: str = "native") -> str:
    """One launcher per node under srun, and the wait for them, bounded once node 0's ended."""
    engine_option = " --engine horovod" if engine == "horovod" else ""
    return f"""
# One launcher per node. It reads SLURM's node list and node rank, and starts this node's
# processes; node 0 writes the config and hosts the rendezvous. Each node's launcher leaves its
# exit status in STEP_DIR (every node sees slurm-logs/) when it ends. No --kill-on-bad-exit:
# when a node is lost the others' collectives fail (at once, naming the peer, or after
# runtime.collective_timeout_s) and record why, where SLURM's SIGTERM would record a stop.
export STEP_DIR="slurm-logs/.${{SLURM_JOB_ID}}.${{SLURM_RESTART_COUNT:-0}}"
mkdir -p "$STEP_DIR"
srun --ntasks-per-node=1 --kill-on-bad-exit=0 \\
    bash -c '"$@"; s=$?; echo "$s $(hostname)" > "$STEP_DIR/node-$SLURM_NODEID"; exit "$s"' node \\
    "$PYTHON" -m launch --framework {framework}{engine_option} --gpus "$DEVICES" \\
    --run-id "slurm-${{SLURM_JOB_ID}}" --results "$RESULTS" --auto-resume \\
    ${{EXTRA[@]+"${{EXTRA[@]}}"}} "$@" &
SRUN=$!
# Wait for srun a second at a time (USR1 ends a `wait` early: the trap runs, the loop goes on).
# Once node 0's launcher has ended, the others get GRACE_S to end: a node that no longer
# answers (its link down) would hold srun until SLURM declares it down (SlurmdTimeout, minutes)
GRACE_S=15
ended=""
left=""
while kill -0 "$SRUN" 2>/dev/null; do
    [ -n "$ended" ] || [ ! -e "$STEP_DIR/node-0" ] || ended=$SECONDS
    if [ -n "$ended" ] && [ $((SECONDS - ended)) -ge $GRACE_S ]; then
        lost=$(for k in $(seq 0 $((SLURM_JOB_NUM_NODES - 1))); do
            [ -e "$STEP_DIR/node-$k" ] || echo "node $k ($(scontrol show hostnames \\
                "$SLURM_JOB_NODELIST" | sed -n "$((k + 1))p"))"; done)
        echo "$(date -u +%FT%TZ) node 0's launcher ended ${{GRACE_S}} s ago; no end from:" $lost
        left=1
        kill -KILL "$SRUN"
        break
    fi
    sleep 1 & wait $! || true
done
status=0
wait "$SRUN" 2>/dev/null || status=$?
# srun's status, or node 0's where srun was left waiting
[ -z "$left" ] || read -r status _ < "$STEP_DIR/node-0"
rm -rf "$STEP_DIR"
echo "$(date -u +%FT%TZ) step ended: exit $status"
"""


def _requeue_lines(framework: str) -> str:
    """A failed step requeues the job (at most DENOISEBENCH_MAX_REQUEUES times)."""
    return f"""
# A step that failed (a node lost, a process killed, a collective timed out) is requeued, at
# most DENOISEBENCH_MAX_REQUEUES times in all, and the requeued job resumes (--auto-resume).
# Not requeued: success, bad input (2), divergence (the same would happen again).
case "$status" in 0 | 2) exit "$status" ;; esac
if grep -qs '"status": "diverged"' "$RESULTS/slurm-${{SLURM_JOB_ID}}/{framework}/summary.json"; then
    exit "$status"
fi
MAX_REQUEUES="${{DENOISEBENCH_MAX_REQUEUES:-2}}"
if [ "${{SLURM_RESTART_COUNT:-0}}" -ge "$MAX_REQUEUES" ]; then
    echo "not requeued: requeued ${{SLURM_RESTART_COUNT:-0}} times already (DENOISEBENCH_MAX_REQUEUES)"
    exit "$status"
fi
echo "$(date -u +%FT%TZ) step failed (exit $status): requeueing ${{SLURM_JOB_ID}} to resume"
scontrol requeue "${{SLURM_JOB_ID}}"
exit "$status"
"""


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
    """Submit each framework through submitit; with --wait, wait (to a deadline) and report."""
    if args.repeats != 1:
        print("error: --repeats with --slurm: submit a sweep instead", file=sys.stderr)
        return 2
    req = slurm_request(args)
    log_dir = run_dir / "slurm-logs"
    resume = args.resume is not None
    jobs = []
    for framework in frameworks:
        summary = read_summary(run_dir, framework) if resume else None
        if summary and summary.get("status") == "completed":
            print(f"[{framework}] already completed, skipping", flush=True)
            continue
        job = submit(framework, req, run_dir, log_dir, resume=resume, master_port=args.master_port)
        print(f"[{framework}] submitted SLURM job {job.job_id}; logs: {log_dir}", flush=True)
        jobs.append((framework, job))
    if not args.wait:
        return 0
    failed = wait_for_jobs([(fw, run_dir, job) for fw, job in jobs], args.wait_timeout)
    print()
    print(comparison_table(run_dir))
    print(f"\nresults: {run_dir}")
    return 1 if failed else 0


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
    print(sweep_table(sweep_dir, elements))
    return 1 if failed else 0
