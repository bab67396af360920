"""Joining the processes of a multi-host job: every host runs the same command and JAX connects them.

Cloud TPU VMs and Slurm are detected by `jax.distributed.initialize()` itself; elsewhere (several GPU
boxes, or CPU processes in tests) the coordinator, process count and id are given explicitly. A single
process does nothing.
"""

from __future__ import annotations

import os
import socket
import time


class DistributedError(RuntimeError):
    """The processes could not be joined; the message names the coordinator and what to check."""


def _on_cloud_tpu_pod() -> bool:
    # Set on every worker of a multi-host Cloud TPU slice (TPU VM metadata, exported by libtpu's env).
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return len([h for h in hosts.split(",") if h]) > 1


def _under_multi_task_slurm() -> bool:
    return "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout_s: int = 300, cpu_collectives: bool = False) -> bool:
    """Call `jax.distributed.initialize` when this is one process of several; True if it did.

    `cpu_collectives` turns on gloo so CPU devices of different processes can all-reduce (tests).
    """
    import jax

    explicit = coordinator is not None or num_processes is not None or process_id is not None
    if not explicit and not (_on_cloud_tpu_pod() or _under_multi_task_slurm()):
        return False
    if explicit and (coordinator is None or num_processes is None or process_id is None):
        raise DistributedError("give all of --coordinator HOST:PORT, --num-processes N and --process-id I "
                               "(or none, on a Cloud TPU pod or under Slurm)")
    if explicit and not 0 <= process_id < num_processes:
        raise DistributedError(f"--process-id {process_id} is outside 0..{num_processes - 1}")
    if explicit and process_id != 0:
        _wait_for(coordinator, timeout_s)
    if cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=timeout_s)
    except Exception as e:  # XLA raises several kinds; the fix is the same
        where = coordinator or "the coordinator JAX detected"
        raise DistributedError(f"could not join {where} within {timeout_s} s ({type(e).__name__}: "
                               f"{str(e)[:300]}); check the address and port are reachable from every "
                               "host and that all processes were started") from None
    return True


def _wait_for(coordinator: str, timeout_s: int) -> None:
    """Poll the coordinator's port: JAX aborts the whole process (no exception) when it cannot
    register, so an unreachable address is caught here with a message instead."""
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit():
        raise DistributedError(f"--coordinator {coordinator!r} must be HOST:PORT")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=2):
                return
        except OSError as e:
            if time.monotonic() > deadline:
                raise DistributedError(f"could not reach the coordinator {coordinator} within {timeout_s} s "
                                       f"({e.strerror or e}); start process 0 there first and check that the "
                                       "port is open from this host") from None
            time.sleep(0.5)
