"""The device mesh and how parameters, optimizer state and batches are laid out on it.

Mesh axes are ('data', 'fsdp', 'tensor'). Parameters carry logical axis names (model.py); the rules in
the config map those onto mesh axes. A one-device mesh is the degenerate case of the same code.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from electra_jax.config import MESH_AXES, mesh_shape


def device_grid(config: ml_collections.ConfigDict, devices: Sequence[Any]) -> np.ndarray:
    """The devices laid out as the ('data', 'fsdp', 'tensor') grid. With `mesh.dcn_data` = S > 1 (S TPU
    slices, or S GPU/CPU processes) the data axis spans the slow data-centre network S ways and
    everything else stays inside a slice or process (mesh_utils.create_hybrid_device_mesh), so only
    gradient all-reduces cross it. TPU devices know their slice; elsewhere the process is the unit."""
    sizes = mesh_shape(config, len(devices))
    shape = [sizes[a] for a in MESH_AXES]
    dcn = int(config.mesh.get("dcn_data", 1))
    if dcn > 1:
        ici = [shape[0] // dcn, *shape[1:]]
        return mesh_utils.create_hybrid_device_mesh(ici, [dcn, 1, 1], devices,
                                                    process_is_granule=devices[0].platform != "tpu")
    try:
        return mesh_utils.create_device_mesh(shape, devices)
    except (AssertionError, NotImplementedError, ValueError):
        return np.asarray(devices).reshape(shape)  # topologies mesh_utils does not know


def make_mesh(config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The ('data', 'fsdp', 'tensor') mesh over `devices` (default: all), laid out by `device_grid`."""
    return Mesh(device_grid(config, list(devices if devices is not None else jax.devices())), MESH_AXES)


def bytes_per_device(abstract_tree: Any, shardings: Any) -> int:
    """Bytes one device holds of a tree laid out by `shardings` (from shapes; nothing is allocated)."""
    return sum(int(np.prod(sh.shard_shape(x.shape))) * x.dtype.itemsize
               for x, sh in zip(jax.tree.leaves(abstract_tree), jax.tree.leaves(shardings)))


@contextlib.contextmanager
def activation_layout(mesh: Mesh):
    """While tracing a step: the model's activation constraints (model._constrain, rules from the
    ModelSpec) resolve on `mesh`; outside it they are no-ops (a plain `model.apply`)."""
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        yield


def with_activation_layout(fn: Callable, mesh: Mesh) -> Callable:
    """`fn` traced under `activation_layout(mesh)`: wrap what is handed to jax.jit. The wrapper keeps
    `fn`'s name (a partial's function's), so the compiled module is still `jit_train_step` (profiles
    find the step's ops by that name)."""
    def wrapped(*args, **kwargs):
        with activation_layout(mesh):
            return fn(*args, **kwargs)

    wrapped.__name__ = wrapped.__qualname__ = getattr(fn, "__name__", getattr(getattr(fn, "func", None),
                                                                              "__name__", "step"))
    return wrapped


def shardings_for(boxed_tree: Any, mesh: Mesh, rules) -> Any:
    """NamedShardings for a tree whose leaves are (abstract) nn.LogicallyPartitioned boxes or arrays.

    A dimension that its mesh axes do not divide (one generator head on a 2-way tensor axis, say) is
    replicated instead, so any model fits any mesh; the others keep their sharding. `undivided` lists
    those dimensions (`electra-jax plan` refuses them unless told otherwise).
    """
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed_tree), mesh, rules)
    shapes = jax.tree.map(lambda x: x.shape, nn.unbox(boxed_tree))
    return jax.tree.map(lambda sh, shape: _divisible(sh, shape, mesh)[0], shardings, shapes,
                        is_leaf=lambda x: isinstance(x, NamedSharding))


def undivided(boxed_tree: Any, mesh: Mesh, rules) -> list[str]:
    """One line per parameter dimension that its sharding rule asked to split but whose size the mesh
    axes do not divide (so `shardings_for` replicates it), with the bytes each device then holds."""
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed_tree), mesh, rules)
    flat, _ = jax.tree_util.tree_flatten_with_path(nn.unbox(boxed_tree))
    flat_sh = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
    lines = []
    for (path, x), sh in zip(flat, flat_sh):
        fixed, dropped = _divisible(sh, x.shape, mesh)
        name = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
        per_device = int(np.prod(fixed.shard_shape(x.shape))) * x.dtype.itemsize
        lines += [f"{name} {list(x.shape)}: dimension {dim} ({x.shape[dim]}) is not divisible by mesh "
                  f"axes {axes} ({ways}-way), so it is replicated: {per_device / 2**10:,.0f} KiB per device"
                  for dim, axes, ways in dropped]
    return lines


def _divisible(sharding: NamedSharding, shape: tuple, mesh: Mesh) -> tuple[NamedSharding, list]:
    spec = list(sharding.spec) + [None] * (len(shape) - len(sharding.spec))
    dropped = []
    for dim, axes in enumerate(spec):
        names = axes if isinstance(axes, tuple) else (axes,)
        ways = int(np.prod([mesh.shape[a] for a in names if a is not None]))
        if shape[dim] % ways:
            dropped.append((dim, axes, ways))
            spec[dim] = None
    return NamedSharding(mesh, PartitionSpec(*spec)), dropped


def batch_sharding(mesh: Mesh, rules) -> NamedSharding:
    """Examples split over the 'batch' rule's mesh axes (data x fsdp by default), other dims unsplit;
    one sharding for [B] labels and [B, S] token arrays alike."""
    return nn.logical_to_mesh_sharding(PartitionSpec("batch"), mesh, rules)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
