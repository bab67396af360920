"""The device mesh and how parameters, optimizer state and batches are laid out on it.

Mesh axes are ('data', 'fsdp', 'tensor'). Parameters carry logical axis names (model.py); the rules in
the config map those onto mesh axes. A one-device mesh is the degenerate case of the same code.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from electra_jax.config import MESH_AXES, mesh_shape


def make_mesh(config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None) -> Mesh:
    devices = list(devices if devices is not None else jax.devices())
    sizes = mesh_shape(config, len(devices))
    shape = [sizes[a] for a in MESH_AXES]
    try:
        grid = mesh_utils.create_device_mesh(shape, devices)
    except (AssertionError, NotImplementedError, ValueError):
        grid = np.asarray(devices).reshape(shape)  # topologies mesh_utils does not know
    return Mesh(grid, MESH_AXES)


def logical_rules(config: ml_collections.ConfigDict) -> tuple:
    return tuple((name, tuple(t) if isinstance(t, (list, tuple)) else t)
                 for name, t in config.sharding_rules)


def shardings_for(boxed_tree: Any, mesh: Mesh, rules) -> Any:
    """NamedShardings for a tree whose leaves are (abstract) nn.LogicallyPartitioned boxes or arrays."""
    return nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed_tree), mesh, rules)


def batch_sharding(mesh: Mesh, rules) -> NamedSharding:
    """Examples split over the 'batch' rule's mesh axes (data x fsdp by default), sequence unsplit."""
    return nn.logical_to_mesh_sharding(PartitionSpec("batch", None), mesh, rules)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
