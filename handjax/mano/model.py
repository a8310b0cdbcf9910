"""The MANO hand model as an immutable pytree.

Array leaves can be placed on devices, sharded, closed over by ``jax.jit`` or
passed through ``vmap``; the kinematic tree (``parents``) and ``side`` are
static metadata.
"""
from __future__ import annotations

from typing import Tuple

import jax.numpy as jnp
import numpy as np
from flax import struct

NUM_JOINTS = 16
NUM_VERTS = 778
NUM_FACES = 1538
NUM_BETAS = 10
NUM_POSE_BASIS = (NUM_JOINTS - 1) * 9  # 135
MANO_PARENTS = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14)
# Joint order of the MANO kinematic tree (smplx / official order).
MANO_JOINT_NAMES = (
    "wrist", "index1", "index2", "index3", "middle1", "middle2", "middle3",
    "pinky1", "pinky2", "pinky3", "ring1", "ring2", "ring3", "thumb1", "thumb2", "thumb3",
)
SIDES = ("right", "left")


@struct.dataclass
class ManoModel:
    """MANO arrays (metres).

    v_template (V, 3); shapedirs (V, 3, S); posedirs (V, 3, 135) indexed by the
    row-major flattening of (R_j - I) for joints 1..15; J_regressor (16, V)
    dense; lbs_weights (V, 16); faces (F, 3) int32; hands_components (45, 45)
    PCA basis with components as rows; hands_mean (45,) axis-angle.
    """

    v_template: jnp.ndarray
    shapedirs: jnp.ndarray
    posedirs: jnp.ndarray
    J_regressor: jnp.ndarray
    lbs_weights: jnp.ndarray
    faces: jnp.ndarray
    hands_components: jnp.ndarray
    hands_mean: jnp.ndarray
    parents: Tuple[int, ...] = struct.field(pytree_node=False, default=MANO_PARENTS)
    side: str = struct.field(pytree_node=False, default="right")

    @property
    def num_betas(self) -> int:
        return self.shapedirs.shape[-1]

    @property
    def num_verts(self) -> int:
        return self.v_template.shape[0]


def kinematic_levels(parents: Tuple[int, ...]) -> Tuple[Tuple[int, ...], ...]:
    """Group joints by depth in the tree: ((root,), (depth-1 joints), ...).

    Forward kinematics then runs one batched matmul per level (4 for MANO)
    instead of one per joint.
    """
    depth = []
    for j, p in enumerate(parents):
        if p >= j:
            raise ValueError(f"parents must list each parent before its child; joint {j} has parent {p}")
        depth.append(0 if p < 0 else depth[p] + 1)
    return tuple(tuple(j for j, d in enumerate(depth) if d == lvl) for lvl in range(max(depth) + 1))


def model_from_arrays(arrays: dict, side: str = "right", num_betas: int = NUM_BETAS,
                      dtype=jnp.float32, source: str = "<arrays>") -> ManoModel:
    """Build a ManoModel from decoded MANO arrays (keys as in the official pickle).

    Required keys: v_template, shapedirs, posedirs, J_regressor, weights,
    kintree_table, f, hands_components, hands_mean. ``source`` names the file
    in error messages.
    """
    required = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f",
                "hands_components", "hands_mean")
    missing = [k for k in required if k not in arrays]
    if missing:
        raise KeyError(f"{source}: MANO arrays are missing key(s) {missing}; expected all of {list(required)}")
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    v_template = np.asarray(arrays["v_template"], np.float64)
    nv = v_template.shape[0]
    expect = {
        "v_template": (nv, 3),
        "posedirs": (nv, 3, NUM_POSE_BASIS),
        "J_regressor": (NUM_JOINTS, nv),
        "weights": (nv, NUM_JOINTS),
        "kintree_table": (2, NUM_JOINTS),
        "hands_mean": (45,),
    }
    for key, shape in expect.items():
        got = np.shape(arrays[key])
        if tuple(got) != shape:
            raise ValueError(f"{source}: key {key!r} has shape {tuple(got)}, expected {shape}")
    shapedirs = np.asarray(arrays["shapedirs"], np.float64)
    if shapedirs.ndim != 3 or shapedirs.shape[:2] != (nv, 3) or shapedirs.shape[2] < num_betas:
        raise ValueError(f"{source}: key 'shapedirs' has shape {shapedirs.shape}, expected ({nv}, 3, >= {num_betas})")
    comps = np.asarray(arrays["hands_components"], np.float64)
    if comps.ndim != 2 or comps.shape[1] != 45:
        raise ValueError(f"{source}: key 'hands_components' has shape {comps.shape}, expected (k, 45)")
    faces = np.asarray(arrays["f"]).astype(np.int64)
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.min() < 0 or faces.max() >= nv:
        raise ValueError(f"{source}: key 'f' must be (F, 3) vertex indices in [0, {nv})")
    kintree = np.asarray(arrays["kintree_table"]).astype(np.int64)
    parents = [int(p) for p in kintree[0]]
    parents[0] = -1  # the root's parent is stored as 4294967295 (uint32 max)
    kinematic_levels(tuple(parents))  # validates ordering
    return ManoModel(
        v_template=jnp.asarray(v_template, dtype),
        shapedirs=jnp.asarray(shapedirs[:, :, :num_betas], dtype),
        posedirs=jnp.asarray(arrays["posedirs"], dtype),
        J_regressor=jnp.asarray(arrays["J_regressor"], dtype),
        lbs_weights=jnp.asarray(arrays["weights"], dtype),
        faces=jnp.asarray(faces, jnp.int32),
        hands_components=jnp.asarray(comps, dtype),
        hands_mean=jnp.asarray(arrays["hands_mean"], dtype),
        parents=tuple(parents),
        side=side,
    )


def model_to_arrays(model: ManoModel) -> dict:
    """Inverse of ``model_from_arrays``: numpy arrays with the official key names."""
    parents = np.array(model.parents, np.int64)
    parents[0] = 4294967295
    return {
        "v_template": np.asarray(model.v_template),
        "shapedirs": np.asarray(model.shapedirs),
        "posedirs": np.asarray(model.posedirs),
        "J_regressor": np.asarray(model.J_regressor),
        "weights": np.asarray(model.lbs_weights),
        "kintree_table": np.stack([parents, np.arange(len(parents))]),
        "f": np.asarray(model.faces).astype(np.uint32),
        "hands_components": np.asarray(model.hands_components),
        "hands_mean": np.asarray(model.hands_mean),
    }
