"""How jobs start on a cluster: the task a SLURM job (submitit) runs, and torchrun ended quietly
by a stop signal. Above the trainers: each starts one."""
