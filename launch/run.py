"""What one launch does: check the options and the inputs, make the run folder, train each
framework (here, or submitted to SLURM), print the table, and end with the run's report.
Sweeps run their elements through the same launch, one after the other."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from denoisebench.core.config import ConfigError
from denoisebench.core.failures import (
    clear_failures,
    mark_failed,
    mark_interrupted,
    mark_skipped,
    read_failures,
    write_failure,
    write_killed,
)
from denoisebench.core.placement import (
    check_routable_hostname,
    cpu_threads,
    job_port,
    slurm_job_placement,
    this_host,
)
from denoisebench.core.records import (
    FRAMEWORKS,
    LAUNCHER_ENV,
    check_run_id,
    read_summary,
    resume_command,
)
from denoisebench.measure.environment import gpu_info
from launch.checks import (
    MAX_REPEATS,
    check_gpu_count,
    check_horovod,
    check_local_inputs,
    check_results_path,
    check_submitit,
    missing_frameworks,
)
from launch.commands import (
    Command,
    Topology,
    build_horovod_node_cmd,
    build_horovodrun_cmd,
    build_tf_cmds,
    build_torchrun_cmd,
    build_train_cmd,
)
from launch.folders import measurement_dirs, prepare_run_folder, resolve
from launch.options import prog, wants_report
from launch.slurm import check_slurm_options, submit_sweep, submit_to_slurm, write_sbatch
from launch.supervise import StopSignals, run_group
from launch.sweep import element_args, prepare_sweep


def launch(args: argparse.Namespace, given: set[str] | None) -> int:
    """One launch from parsed options: check and write the run folder, then train (here, or
    submitted to SLURM), print the table, and end with the run's report (--no-report: none).
    `given`: the options on the command line (given_options; None: those that differ from the
    defaults)."""
    try:
        if args.engine == "horovod" and args.sweep:
            raise ConfigError("--engine horovod runs one launch at a time: no --sweep")
        if not 1 <= args.repeats <= MAX_REPEATS:
            raise ConfigError(
                f"--repeats {args.repeats} must be in 1..{MAX_REPEATS} (a verdict needs 2 to "
                "10; each repeat is a whole training run and a folder)"
            )
        for option, value in (("--gpus", args.gpus), ("--nodes", args.nodes)):
            if value is not None and value < 1:
                raise ConfigError(f"{option} {value} must be >= 1 (leave it out for one)")
        check_results_path(args.results)
        if args.run_id is not None:
            check_run_id(args.run_id)
        check_slurm_options(args)  # before anything is written: the values reach a script
        check_submitit(args)
        if args.sbatch_out:
            return write_sbatch(args)
        if args.sweep:
            return run_sweep(args)
        cfg, run_dir = resolve(args, given)
        if args.print_config:
            print(cfg.to_json())
            return 0
        topo = None if args.slurm else resolve_topology(args, cfg.runtime.share_gpus)
        check_horovod(args, topo)
        frameworks = list(FRAMEWORKS) if args.framework == "both" else [args.framework]
        skipped: dict[str, str] = {}
        if not args.slurm:  # a cluster's data, packages and GPUs are on its nodes
            check_local_inputs(cfg, frameworks)
            skipped = missing_frameworks(frameworks, args.framework)
        lock = prepare_run_folder(args, cfg, run_dir, topo)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"run folder: {run_dir}", flush=True)
    if args.slurm:
        if lock is not None:
            lock.release()  # the job's task 0 takes it (denoisebench.cluster.slurm_job)
        code = submit_to_slurm(args, frameworks, run_dir)
        if not args.wait:
            if code == 0 and wants_report(args):
                print(f"report: once the jobs end, {prog()} report {run_dir}", flush=True)
            return code
    else:
        with lock or contextlib.nullcontext():  # held while the trainers run
            code = train_frameworks(args, frameworks, run_dir, topo, skipped)
        if topo is not None and topo.node_rank != 0:
            return code  # node 0 reports
    if not wants_report(args):
        return code
    return max(code, write_run_report(run_dir, args.results))


def write_run_report(run_dir: Path, results: Path) -> int:
    """The report of one run, in <run>/report/ (also after a failed framework: what ran is
    shown, the failure with it); 0, or 1 with one line saying why it was not written."""
    from denoisebench.report.build import ReportError, write_report

    try:
        report = write_report([run_dir], run_dir / "report", results)
    except (ReportError, OSError) as e:  # no summary to report on, or no room to write it
        print(f"report: not written ({e})", file=sys.stderr)
        return 1
    print(f"report: {report}", flush=True)
    return 0


def resolve_topology(args: argparse.Namespace, share_gpus: bool = False) -> Topology | None:
    """The distributed layout, or None for a plain single-device run. Prints the CPU notice.
    Inside SLURM the nodes, this node's rank, the hosts (scontrol's order), the master (node
    0) and the ports (from the job id) are SLURM's, each option overriding its own.
    `share_gpus`: runtime.share_gpus, the --gpus N ranks sharing fewer GPUs (check_gpu_count)."""
    slurm = slurm_job_placement(os.environ, args.master_port)
    nodes = args.nodes or (slurm.nodes if slurm else 1)
    if args.gpus is None and nodes == 1:
        return None
    devices = args.gpus or 1  # --gpus and --nodes below 1 were refused by launch()
    node_rank = args.node_rank if args.node_rank is not None else (slurm.node_rank if slurm else 0)
    if not 0 <= node_rank < nodes:
        raise ConfigError(f"--node-rank {node_rank} outside 0..{nodes - 1}")
    if nodes > 1 and not args.run_id and "SLURM_JOB_ID" not in os.environ:
        raise ConfigError("a multi-node run needs --run-id, so every node uses the same folder")
    master = args.master_addr or (slurm.master_addr if slurm else "127.0.0.1")
    if nodes > 1:
        check_routable_hostname(*this_host(), nodes, master, os.environ)
    info = gpu_info()
    found = len(info["gpus"] or [])
    check_gpu_count(devices, info, share_gpus)
    cores = len(os.sched_getaffinity(0))
    if not found and devices > cores:
        raise ConfigError(
            f"--gpus {devices} with no GPU here means {devices} CPU workers on this node's "
            f"{cores} cores: at most {cores} (one worker per core; each holds its own copy of "
            "the framework and the data)"
        )
    if not found:
        per_node = " per node" if nodes > 1 else ""
        print(
            f"notice: no GPU here ({info.get('reason', 'NVML found none')}); running {devices} "
            f"CPU workers{per_node} instead ({cpu_layout(devices, nodes, args)})",
            flush=True,
        )
    hosts = tuple(args.hosts.split(",")) if args.hosts else (slurm.hosts if slurm else ())
    return Topology(
        devices=devices,
        gpus=bool(found),
        nodes=nodes,
        node_rank=node_rank,
        master_addr=master,
        master_port=slurm.master_port if slurm else job_port(None, args.master_port),
        hosts=hosts,
        # the CPUs SLURM gave this task (SLURM_CPUS_PER_TASK), else this process' cores
        cpu_threads=0 if found else cpu_threads(os.environ, devices, cores),
    )


def cpu_layout(devices: int, nodes: int, args: argparse.Namespace) -> str:
    """What each framework runs on CPU workers, for the notice: the processes and devices
    that make the same global batch in both."""
    if args.engine == "horovod":
        where = f" per node on {nodes} nodes, {devices * nodes} in all" if nodes > 1 else ""
        return f"{devices} Horovod processes over Gloo{where}"
    if nodes > 1:
        each = f"{devices} per node on {nodes} nodes, {devices * nodes} in all"
        return f"torch: gloo ranks, {each}; tf: MultiWorkerMirroredStrategy workers, {each}"
    tf = (
        f"{devices} MultiWorkerMirroredStrategy workers"
        if args.tf_strategy == "multiworker"
        else f"one process, MirroredStrategy over {devices} logical CPU devices"
    )
    return f"torch: {devices} gloo processes, tf: {tf}"


def free_ports(n: int) -> list[int]:
    """n free TCP ports on 127.0.0.1 (for TensorFlow workers on one machine)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def framework_cmds(
    framework: str, run_dir: Path, topo: Topology | None, args: argparse.Namespace, resume: bool
) -> list[Command]:
    # the trainers' resume hints name the command the user typed (records.LAUNCHER_ENV)
    with_env = {"base_env": {**os.environ, LAUNCHER_ENV: prog()}}
    quiet = {"verbose": args.verbose, **with_env}
    if topo is None:
        return [build_train_cmd(framework, run_dir, resume=resume, **quiet)]
    if args.engine == "horovod" and topo.nodes > 1:
        return [build_horovod_node_cmd(framework, run_dir, topo, resume=resume, **quiet)]
    if args.engine == "horovod":
        return [build_horovodrun_cmd(framework, run_dir, topo, resume=resume, **quiet)]
    if framework == "torch":
        return [build_torchrun_cmd(run_dir, topo, run_id=run_dir.name, resume=resume, **with_env)]
    multi = args.tf_strategy == "multiworker"
    ports = free_ports(topo.devices) if multi and topo.nodes == 1 else None
    return build_tf_cmds(run_dir, topo, multi_worker=multi, ports=ports, resume=resume, **quiet)


def train_frameworks(
    args: argparse.Namespace,
    frameworks: list[str],
    run_dir: Path,
    topo: Topology | None,
    skipped: dict[str, str] | None = None,
) -> int:
    """Train each framework in each repeat's folder, then print the table. Returns 0, 1 when
    one failed, or 128 + the signal's number when a stop signal ended it (SIGINT, SIGTERM and
    SIGHUP stop the children and mark the framework interrupted; frameworks not started yet
    stay as they are). A framework in `skipped` (missing_frameworks) is recorded as skipped,
    with the reason, instead of trained."""
    skipped = skipped or {}
    failed = []
    interrupted = None
    folders = measurement_dirs(run_dir, args.repeats)
    with StopSignals() as stop:
        # repeats interleave the frameworks, so a slow drift of the machine hits both alike
        for k, folder in enumerate(folders):
            if len(folders) > 1:
                print(f"--- repeat {k + 1}/{len(folders)}: {folder}", flush=True)
            for framework in frameworks:
                if stop.signum is not None:
                    break
                if framework in skipped:
                    if topo is None or topo.node_rank == 0:
                        mark_skipped(folder, framework, skipped[framework])
                    continue
                code = run_framework(framework, folder, topo, args, stop)
                if code is None:
                    continue
                if code > 128:
                    interrupted = code
                    break
                failed.append(framework)
                if code == 2:
                    break  # bad input (config or data): the next framework would fail the same
            if failed or interrupted or stop.signum is not None:
                break
        if topo is None or topo.node_rank == 0:
            print()
            from denoisebench.report.compare import comparison_table, repeats_table

            print(comparison_table(folders[0]) if len(folders) == 1 else repeats_table(folders))
            print(f"\nresults: {run_dir}")
        if interrupted is None and stop.signum is not None:  # between two frameworks
            interrupted = 128 + stop.signum
    if interrupted is not None:
        name = signal.Signals(interrupted - 128).name
        print(
            f"interrupted by {name}; continue with: {resume_command(run_dir, prog())}", flush=True
        )
        return interrupted
    return 1 if failed else 0


def preload_tables() -> None:
    """Import the console tables' module (pandas: about 0.25 s) in the background while the
    trainers start: their own start-up (importing the framework) is one thread, so this takes
    no time from them even on two cores, and neither the launch's start nor its end waits
    for pandas. The import at the table then finds the module loaded (or waits for it)."""
    threading.Thread(
        target=importlib.import_module, args=("denoisebench.report.compare",), daemon=True
    ).start()


def run_framework(
    framework: str,
    folder: Path,
    topo: Topology | None,
    args: argparse.Namespace,
    stop: StopSignals | None = None,
) -> int | None:
    """Train one framework into one results folder; None on success, else the exit code:
    128 + the signal's number when a stop signal ended it (it is then marked interrupted), 1
    when it diverged (the trainer recorded it)."""
    before = read_summary(folder, framework)
    if args.resume and before and before.get("status") == "completed":
        print(f"[{framework}] already completed, skipping", flush=True)
        return None
    cmds = framework_cmds(framework, folder, topo, args, resume=args.resume is not None)
    if topo is None or topo.node_rank == 0:
        clear_failures(folder / framework)  # an earlier attempt's: not this one's cause
    for argv_, _env in cmds:
        print(f"[{framework}] {' '.join(argv_)}", flush=True)
    # TensorFlow's CPU workers across nodes: named by their index in TF_CONFIG, node-major
    first = topo.node_rank * len(cmds) if topo is not None else 0
    names = [f"{framework} worker {first + i}" for i in range(len(cmds))]
    names = names if len(cmds) > 1 else [framework]
    result = run_group(cmds, names, stop=stop, verbose=args.verbose, started=preload_tables)
    if result.returncode == 0:
        return None
    stopped_by = result.signal
    after = read_summary(folder, framework)
    if after and after != before and after.get("status") == "diverged":
        return 1  # a loss that was not finite: the trainer recorded where and said so
    if result.killed_by and result.failed_process:
        # it could not record its own failure; torchrun's ranks: denoisebench.cluster.torchrun
        write_killed(folder / framework, result.failed_process, result.killed_by)
    failures = read_failures(folder / framework)  # each failed process' own exception
    interrupted_now = after != before and bool(after) and after.get("status") == "interrupted"
    if stopped_by is None and interrupted_now and not failures:
        stopped_by = after.get("signal")  # a signal to the trainer, not through the launcher
    if stopped_by is not None:
        if after and after.get("status") == "completed":
            return None  # it finished as the signal came: the launch stops before the next
        if topo is None or topo.node_rank == 0:
            try:
                mark_interrupted(folder, framework, stopped_by, resume_command(folder, prog()))
            except OSError as e:  # a full disk: the trainer's own record stands
                print(f"[{framework}] could not record the stop in {folder}: {e}", file=sys.stderr)
        print(f"[{framework}] interrupted by {stopped_by}", file=sys.stderr, flush=True)
        return 128 + signal.Signals[stopped_by].value
    # a process a signal killed could not say why: its record does (a SIGKILL's out-of-memory
    # hint); one that failed on its own printed its error already
    cause = failures[0] if failures and failures[0].get("killed_by") else None
    said = f"{cause['process']}: {cause['error']}" if cause else result.failed
    print(f"[{framework}] failed: {said.splitlines()[0][:400]}", file=sys.stderr, flush=True)
    record_failed(framework, folder, topo, result.failed or "failed", failures, interrupted_now)
    # > 128 is kept for interrupted (above); < 0 (killed by a signal) is not an exit code
    return 1 if result.returncode > 128 or result.returncode < 0 else result.returncode


def record_failed(
    framework: str,
    folder: Path,
    topo: Topology | None,
    error: str,
    failures: list[dict[str, Any]],
    interrupted_now: bool,
) -> None:
    """Record a failed framework. Node 0's launcher is the one writer of the summary
    (failures.mark_failed): a read-modify-write from every node would race. Another node
    records only what its own processes did not: its launcher's `error`, as a failure record
    naming the node and its host, which node 0 reads with the processes' own."""
    if topo is not None and topo.node_rank != 0:
        host = socket.gethostname()
        if not any(f.get("host") == host for f in failures):
            write_failure(folder / framework, f"node {topo.node_rank} ({host})", error)
        return
    # a failed rank's peers are stopped by torchrun's SIGTERM, and rank 0 then records
    # 'interrupted': the failures say what really happened
    try:
        mark_failed(folder, framework, error, failures, interrupted_now)
    except OSError as e:  # a full disk: the trainer's own record (and message) stands
        print(f"[{framework}] could not record the failure in {folder}: {e}", file=sys.stderr)


def run_sweep(args: argparse.Namespace) -> int:
    """Every element of a sweep profile: here, one after the other, or as SLURM job arrays."""
    sweep, sweep_dir, elements, configs = prepare_sweep(args)
    print(f"sweep folder: {sweep_dir} ({len(elements)} elements)", flush=True)
    if args.slurm:
        return submit_sweep(args, sweep_dir, elements, configs)
    failed = []
    code = 0
    with StopSignals() as stop:  # a signal between two elements stops the sweep there
        for el in elements:
            if stop.signum is not None:
                code = 128 + stop.signum
                break
            print(f"=== {el.name}", flush=True)
            code = launch(element_args(args, sweep, el, sweep_dir), given=None)
            if code > 128:  # interrupted: the rest of the sweep is not started
                break
            if code != 0:
                failed.append(el.name)
    from denoisebench.report.compare import sweep_table

    print()
    print(sweep_table(sweep_dir, elements))
    return code if code > 128 else 1 if failed else 0
