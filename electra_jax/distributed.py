"""Joining the processes of a multi-host job: every host runs the same command and JAX connects them.

`plan()` decides, from the flags and the environment alone (pure, so it is tested directly):

- explicit `--coordinator/--num-processes/--process-id` (or the JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES, JAX_PROCESS_ID variables): join exactly that;
- a Cloud TPU VM (TPU device files and libtpu present): always `jax.distributed.initialize()`, which
  finds the slice through the TPU metadata server (GceTpuCluster), one host or many, as MaxText does.
  Without it every host of a pod would train alone: no multi-process checkpoint, no preemption sync;
- Slurm with several tasks: initialise; with one task per node, hand each task all of its node's
  GPUs (`local_device_ids`), since JAX otherwise gives each task the single GPU of its local rank;
- anything else is a single process: nothing to join.
"""

from __future__ import annotations

import glob
import os
import socket
import time
from typing import Callable, Mapping

from electra_jax.errors import UserError


class DistributedError(UserError, RuntimeError):
    """The processes could not be joined; the message names the coordinator and what to check."""


def on_cloud_tpu_vm(env: Mapping[str, str], paths: Callable[[str], list[str]] = glob.glob) -> bool:
    """TPU chips on this VM (v4: /dev/accel*, v5e/v5p/v6e: /dev/vfio/<n>) with libtpu installed, or
    a GKE TPU pod's worker list."""
    if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
        return True
    if not (paths("/dev/accel[0-9]*") or paths("/dev/vfio/[0-9]*")):
        return False
    import importlib.util

    return importlib.util.find_spec("libtpu") is not None


def _slurm_local_devices(env: Mapping[str, str]) -> list[int] | None:
    """All GPUs of the node for a one-task-per-node Slurm job; None (JAX's default) otherwise."""
    tasks = int(env.get("SLURM_NTASKS", "1"))
    nodes = int(env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES")
                or tasks)
    if tasks != nodes:  # one task per GPU: JAX's default (the GPU of the local rank) is right
        return None
    visible = env.get("CUDA_VISIBLE_DEVICES", "")
    count = len([d for d in visible.split(",") if d]) if visible else int(
        (env.get("SLURM_GPUS_ON_NODE") or "0").split("(")[0] or 0)
    return list(range(count)) if count else None


def plan(env: Mapping[str, str], coordinator: str | None = None, num_processes: int | None = None,
         process_id: int | None = None, on_tpu_vm: bool | None = None) -> dict | None:
    """Keyword arguments for `jax.distributed.initialize`, or None for a single process."""
    coordinator = coordinator or env.get("JAX_COORDINATOR_ADDRESS") or None
    if num_processes is None and env.get("JAX_NUM_PROCESSES"):
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = int(env["JAX_PROCESS_ID"])
    given = [x is not None for x in (coordinator, num_processes, process_id)]
    if any(given):
        if not all(given):
            raise DistributedError("give all of --coordinator HOST:PORT, --num-processes N and --process-id I "
                                   "(or none, on a Cloud TPU VM or under Slurm)")
        if not 0 <= process_id < num_processes:
            raise DistributedError(f"--process-id {process_id} is outside 0..{num_processes - 1}")
        if num_processes == 1:
            return None
        return {"coordinator_address": coordinator, "num_processes": num_processes, "process_id": process_id}
    if on_tpu_vm if on_tpu_vm is not None else on_cloud_tpu_vm(env):
        return {}  # JAX asks the TPU metadata server for the slice
    if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        devices = _slurm_local_devices(env)
        return {"local_device_ids": devices} if devices else {}
    return None


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout_s: int = 300, cpu_collectives: bool = False) -> bool:
    """Call `jax.distributed.initialize` as `plan` says; True if it did.

    `cpu_collectives` turns on gloo so CPU devices of different processes can all-reduce (tests).
    """
    kwargs = plan(os.environ, coordinator, num_processes, process_id)
    if kwargs is None:
        return False
    import jax

    coordinator = kwargs.get("coordinator_address")
    if coordinator and kwargs["process_id"] != 0:
        _wait_for(coordinator, timeout_s)
    if cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(initialization_timeout=timeout_s, **kwargs)
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
