"""Identity-aware hand mesh estimation (Kong et al., ECCV 2022; deyingk/PersonalizedHandMeshEstimation).

One network class covers the three MANO-based models of the release (shared parts):

* baseline (``MANO_Based_Model_Iterative_Pose_Without_GT_Shape``, ``pose_mode="add"``, ``shape_head``):
  backbone -> ``fc`` (the ImageNet classifier kept as a ``feature_dim``-d feature, 1000 upstream)
  -> iterative 6D pose regressor (init ``BASELINE_INIT_6D``, additive updates) + shape MLP;
* with the confidence branch (``..._With_Conf``, ``confidence=True``): a Linear on the DETACHED
  feature, an unbounded scalar (higher = more trustworthy shape);
* identity-aware (``MANO_Based_Model_Iterative_Pose``, ``pose_mode="multiply"``, no shape head):
  init ``IDENTITY_INIT_6D``, update ``pose <- 6D(R(delta) @ R(pose))`` (eps 1e-6); betas come
  from outside and enter only through MANO (:func:`decode`).

A 2D keypoint heatmap head (``heatmaps=True``) on the backbone's ``layer1`` map stands in for
upstream's separate CMR 2D network: it gives the inference-time optimisation its targets.

6D convention: the first two ROWS of the rotation matrix (pytorch3d), Gram-Schmidt on rows
(:func:`rows6d_to_matrix`). Shapes: B batch, P = 16 * 6 = 96.
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from handjax import mano
from handjax.models import registry
from handjax.models.hand_output import HandOutput, make_hand_output

UNIT = 0.2  # upstream's geometry unit (metres): meshes / 0.2 in every loss
NUM_JOINTS = 16
POSE_DIM = NUM_JOINTS * 6
BASELINE_INIT_6D = (1.0, 0.0, 0.0, 1.0, 0.0, 0.0)  # eye(3)[:, :, :2] sliced as columns (degenerate, a constant)
IDENTITY_INIT_6D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # the first two rows of eye(3)
MULTIPLY_EPS = 1e-6  # the model class's rotation_6d_to_matrix
TORCH_NORMALIZE_EPS = 1e-12  # F.normalize's default (rotation_conversions.rotation_6d_to_matrix)
POSE_MODES = ("add", "multiply")
# manopth's joints (DexYCB order: wrist, thumb 1-3 + tip, ...; tips 745/317/444/556/673) in metres, not centred
CONVENTION = mano.CONVENTIONS["manopth"].replace(name="idhandmesh", units="m", center_idx=None)


# ----------------------------------------------------------------------------- 6D rows
def rows6d_to_matrix(x: jnp.ndarray, eps: float = TORCH_NORMALIZE_EPS) -> jnp.ndarray:
    """(..., 6) -> (..., 3, 3): rows b1 = a / |a|, b2 = normalise(b - <b1, b> b1), b3 = b1 x b2,
    each norm clamped below by ``eps`` (torch.nn.functional.normalize)."""
    a, b = x[..., :3], x[..., 3:6]
    norm = lambda v: v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), eps)
    b1 = norm(a)
    b2 = norm(b - jnp.sum(b1 * b, axis=-1, keepdims=True) * b1)
    return jnp.stack([b1, b2, jnp.cross(b1, b2)], axis=-2)


def matrix_to_rows6d(m: jnp.ndarray) -> jnp.ndarray:
    """(..., 3, 3) -> (..., 6): the first two rows, flattened."""
    return m[..., :2, :].reshape(m.shape[:-2] + (6,))


def compose_6d(delta: jnp.ndarray, pose: jnp.ndarray, eps: float = MULTIPLY_EPS) -> jnp.ndarray:
    """The identity-aware update: (..., 16*6) x2 -> 6D rows of ``R(delta) @ R(pose)`` per joint."""
    shape = delta.shape[:-1] + (NUM_JOINTS, 6)
    r = rows6d_to_matrix(delta.reshape(shape), eps) @ rows6d_to_matrix(pose.reshape(shape), eps)
    return matrix_to_rows6d(r).reshape(delta.shape)


def pose_to_rotmats(pose6d: jnp.ndarray) -> jnp.ndarray:
    """(..., 96) -> (..., 16, 3, 3) absolute MANO rotations (flat hand mean)."""
    return rows6d_to_matrix(pose6d.reshape(pose6d.shape[:-1] + (NUM_JOINTS, 6)))


# ----------------------------------------------------------------------------- parts
def _torch_linear(i: int, o: int, rngs: nnx.Rngs) -> nnx.Linear:
    """nn.Linear's default init: weight and bias uniform in +-1/sqrt(fan_in)."""
    bound = 1.0 / np.sqrt(i)
    init = lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)
    return nnx.Linear(i, o, kernel_init=init, bias_init=init, rngs=rngs)


@registry.register("head", "mlp")
class MLP(nnx.Module):
    """``make_linear_layers_with_dropout(dims, 0.0)``: Linear-ReLU between, no activation after the last."""

    def __init__(self, dims: Sequence[int], *, rngs: nnx.Rngs):
        self.layers = nnx.List([_torch_linear(i, o, rngs) for i, o in zip(dims[:-1], dims[1:])])

    def __call__(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = nnx.relu(x)
        return x


@registry.register("head", "iterative_6d_pose")
class IterativePose(nnx.Module):
    """``iterations`` MLPs [feat + 96, *hidden, 96]; stage i sees concat(feature, pose_i).

    mode "add": init BASELINE_INIT_6D per joint, pose <- pose + delta (baseline / confidence models);
    mode "multiply": init IDENTITY_INIT_6D, pose <- compose_6d(delta, pose) (identity-aware model).
    Returns the per-stage poses (B, 96), LAST stage first (upstream's ``pred_pose_6d[::-1]``).
    """

    def __init__(self, feat_dim: int, *, rngs: nnx.Rngs, mode: str = "add", iterations: int = 3,
                 hidden: Sequence[int] = (512, 256, 128)):
        if mode not in POSE_MODES:
            raise ValueError(f"config key model.pose_mode: expected one of {POSE_MODES}, got {mode!r}")
        self.mode = mode
        self.stages = nnx.List([MLP((feat_dim + POSE_DIM, *hidden, POSE_DIM), rngs=rngs) for _ in range(iterations)])

    def init_pose(self, batch: int) -> jnp.ndarray:
        init = BASELINE_INIT_6D if self.mode == "add" else IDENTITY_INIT_6D
        return jnp.tile(jnp.asarray(init, jnp.float32), (batch, NUM_JOINTS))

    def __call__(self, feat: jnp.ndarray) -> list:
        pose = self.init_pose(feat.shape[0])
        out = []
        for mlp in self.stages:
            delta = mlp(jnp.concatenate([feat, pose], axis=-1))
            pose = pose + delta if self.mode == "add" else compose_6d(delta, pose)
            out.append(pose)
        return out[::-1]


@registry.register("head", "keypoint_heatmaps")
class HeatmapHead(nnx.Module):
    """21 keypoint heatmap logits at half the input resolution from a stride-4 feature map:
    conv3x3-ReLU, bilinear x2, conv1x1 -> (B, S/2, S/2, 21)."""

    def __init__(self, in_ch: int, *, rngs: nnx.Rngs, hidden: int = 64, num_keypoints: int = 21):
        self.conv = nnx.Conv(in_ch, hidden, (3, 3), padding="SAME", rngs=rngs)
        self.out = nnx.Conv(hidden, num_keypoints, (1, 1), rngs=rngs)

    def __call__(self, fmap):
        y = nnx.relu(self.conv(fmap))
        b, h, w, c = y.shape
        y = jax.image.resize(y, (b, 2 * h, 2 * w, c), "bilinear")
        return self.out(y)


class IdHandMeshModel(nnx.Module):
    """Backbone + fc feature + iterative 6D pose (+ shape MLP, confidence branch, heatmap head)."""

    def __init__(self, *, backbone: str = "resnet50", rngs: nnx.Rngs, feature_dim: int = 1000,
                 pose_mode: str = "add", iterations: int = 3, pose_hidden: Sequence[int] = (512, 256, 128),
                 shape_head: bool = True, shape_hidden: Sequence[int] = (512, 256, 128), confidence: bool = False,
                 conf_hidden: Sequence[int] = (), heatmaps: bool = False, conv_impl: str = "auto"):
        self.backbone = registry.build("backbone", backbone, config_key="model.backbone", rngs=rngs,
                                       conv_impl=conv_impl)
        self.fc = _torch_linear(self.backbone.num_features, feature_dim, rngs)
        self.pose = registry.build("head", "iterative_6d_pose", feat_dim=feature_dim, rngs=rngs, mode=pose_mode,
                                   iterations=iterations, hidden=tuple(pose_hidden))
        self.shape = (registry.build("head", "mlp", dims=(feature_dim, *shape_hidden, 10), rngs=rngs)
                      if shape_head else None)
        self.conf = (registry.build("head", "mlp", dims=(feature_dim, *conf_hidden, 1), rngs=rngs) if confidence
                     else None)  # upstream's script: conf_hidden_layers=1, a single Linear
        stem_ch = 64 * (4 if self.backbone.num_features == 2048 else 1)  # layer1 channels
        self.heatmaps = registry.build("head", "keypoint_heatmaps", in_ch=stem_ch, rngs=rngs) if heatmaps else None

    def __call__(self, images: jnp.ndarray) -> dict:
        """images (B, S, S, 3) -> {"feature" (B, D), "pose6d": [(B, 96)] last stage first,
        "betas" (B, 10) (shape head), "conf" (B,) (confidence branch, on the detached feature),
        "heatmaps" (B, S/2, S/2, 21) logits (heatmap head)}."""
        maps = self.backbone.features(images)
        feat = self.fc(maps["pooled"].astype(jnp.float32))
        out = {"feature": feat, "pose6d": self.pose(feat)}
        if self.shape is not None:
            out["betas"] = self.shape(feat)
        if self.conf is not None:
            out["conf"] = self.conf(jax.lax.stop_gradient(feat))[..., 0]
        if self.heatmaps is not None:
            out["heatmaps"] = self.heatmaps(maps["layer1"]).astype(jnp.float32)
        return out


# ----------------------------------------------------------------------------- decode
def mano_mesh(mano_model: mano.ManoModel, pose6d: jnp.ndarray, betas: jnp.ndarray, with_mesh: bool = True):
    """(B, 96) 6D rows, (B, 10) -> (rotmats (B, 16, 3, 3), MANO output in metres, MANO frame, no centring)."""
    rotmats = pose_to_rotmats(pose6d)
    fwd = mano.mano_forward if with_mesh else mano.mano_joints
    return rotmats, fwd(mano_model, rotmats, betas, None, convention=CONVENTION)


def decode(pose6d: jnp.ndarray, betas: jnp.ndarray, mano_model: mano.ManoModel, K: jnp.ndarray,
           transl: jnp.ndarray, with_mesh: bool = True) -> HandOutput:
    """The hand-output contract: MANO(pose, betas) + transl (camera frame, metres; joints in the
    manopth order), pinhole camera ``K [I | 0]`` (K (B, 3, 3) crop intrinsics), transl (B, 3)."""
    rotmats, out = mano_mesh(mano_model, pose6d, betas, with_mesh)
    t = transl[:, None, :]
    camera = jnp.concatenate([K, jnp.zeros(K.shape[:-1] + (1,), K.dtype)], axis=-1)
    return make_hand_output(out.joints + t, camera, rotmats, betas,
                            out.vertices + t if with_mesh else None, convention="manopth")  # manopth's joint order


def heatmap_keypoints(heatmaps: jnp.ndarray, image_size: int, mode: str = "argmax") -> jnp.ndarray:
    """(B, h, w, 21) logits -> (B, 21, 2) crop pixels (OpenCV centres: heatmap cell (i, j) is the
    crop point ((j + 0.5) S / w - 0.5, (i + 0.5) S / h - 0.5)). ``argmax``: the integer peak
    (upstream); ``soft_argmax``: the softmax-weighted mean cell."""
    b, h, w, k = heatmaps.shape
    flat = heatmaps.transpose(0, 3, 1, 2).reshape(b, k, h * w)
    if mode == "argmax":
        idx = jnp.argmax(flat, axis=-1)
        ij = jnp.stack([idx % w, idx // w], -1).astype(jnp.float32)
    elif mode == "soft_argmax":
        p = jax.nn.softmax(flat, axis=-1)
        cols, rows = jnp.meshgrid(jnp.arange(w, dtype=jnp.float32), jnp.arange(h, dtype=jnp.float32))
        ij = jnp.stack([p @ cols.reshape(-1), p @ rows.reshape(-1)], -1)
    else:
        raise ValueError(f"config key optimize.keypoints: expected argmax or soft_argmax, got {mode!r}")
    scale = jnp.asarray([image_size / w, image_size / h], jnp.float32)
    return (ij + 0.5) * scale - 0.5


def backproject(uv: jnp.ndarray, K: jnp.ndarray, depth: float) -> jnp.ndarray:
    """(B, 2) pixels, (B, 3, 3) -> (B, 3): the camera point at ``depth`` projecting to ``uv``."""
    ones = jnp.ones(uv.shape[:-1] + (1,), uv.dtype)
    ray = jnp.einsum("bij,bj->bi", jnp.linalg.inv(K), jnp.concatenate([uv, ones], -1))
    return ray / ray[..., 2:3] * depth


def init_translation(mano_model, pose6d, betas, wrist_uv, K, depth: float) -> jnp.ndarray:
    """Translation putting the MANO wrist at the back-projection of ``wrist_uv`` at ``depth`` (upstream's
    stage-1 init: the predicted 2D wrist at Z = 0.85 m)."""
    _, out = mano_mesh(mano_model, pose6d, betas, with_mesh=False)
    return backproject(wrist_uv, K, depth) - out.joints[:, 0]
