"""The sbatch scripts: slurm/torch.sbatch and slurm/tf.sbatch, and what --sbatch-out writes.

Readable scripts that run the launcher once per node (`srun --ntasks-per-node=1 python -m
launch ... --auto-resume`), each node's launcher starting that node's processes; a USR1 trap
requeues the job before its time limit, a failed step (a node lost) requeues it too, and the
requeued job resumes. Pure functions of the request (SlurmRequest, launch/slurm_options.py):
the scripts in slurm/ are render_sbatch with the defaults (tests/test_slurm.py checks it).
"""

from __future__ import annotations

import shlex

from launch.slurm_options import SlurmRequest


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
