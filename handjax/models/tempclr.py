"""TempCLR (3DV 2022): ResNet backbone + ExPose-style iterative MANO regressor.

Parameter vector (P = 109, TempCLR / ExPose order):
  [0:6]    wrist rotation, 6D, interleaved layout (row-major 3x2)
  [6:96]   15 finger rotations, 6D interleaved
  [96:106] 10 MANO betas
  [106:109] weak-perspective camera [scale_raw, tx, ty]; scale = softplus(scale_raw)
MANO is used with rotation matrices, no PCA, no hand mean, TempCLR's
fingertip vertices; the camera projects to normalised crop coordinates in
[-1, 1] (x right, y down): x2d = s * (X[:, :2] + t).

The MANO model is not a module attribute: ``decode`` takes it as an argument
(a pytree), so MANO stays a pure function of its arrays.
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from handjax import mano
from handjax.geometry import project_weak_perspective, rot6d_to_matrix, torch_softplus
from handjax.models.resnet import ResNet, TorchBatchNorm

NUM_PARAMS = 109
CAMERA_MEAN_SCALE_RAW = 0.37816456  # softplus^-1(0.9), TempCLR's camera mean
IDENTITY_6D = (1.0, 0.0, 0.0, 1.0, 0.0, 0.0)


class Buffer(nnx.Variable):
    """Non-trainable state saved with the model (e.g. the regressor's x0)."""


def default_mean_param(camera_scale: float = 0.9) -> jnp.ndarray:
    """x0: identity rotations, zero betas, camera [softplus^-1(camera_scale), 0, 0].

    0.9 is TempCLR's construction-time value (a released checkpoint's
    ``regressor.mean_param`` replaces it). For training from scratch the
    scale should roughly map a hand in metres onto the [-1, 1] crop, i.e.
    2 / (crop side in metres): about 8 for a crop 1.5x a 19 cm hand.
    """
    raw = float(camera_scale + np.log(-np.expm1(-camera_scale)))  # softplus^-1, in numpy (works under tracing)
    return jnp.concatenate([jnp.tile(jnp.array(IDENTITY_6D), 16), jnp.zeros(10), jnp.array([raw, 0.0, 0.0])])


def split_params(x: jnp.ndarray) -> dict:
    return {"wrist_pose": x[..., 0:6], "hand_pose": x[..., 6:96], "betas": x[..., 96:106],
            "camera": x[..., 106:109]}


class IterativeRegressor(nnx.Module):
    """x_{k+1} = x_k + MLP(concat[feat, x_k]), one MLP shared by all stages, x_0 = mean_param."""

    def __init__(self, feat_dim: int, *, rngs: nnx.Rngs, hidden: Sequence[int] = (1024, 1024),
                 num_stages: int = 3, dtype=jnp.float32, camera_scale: float = 0.9):
        dims = [feat_dim + NUM_PARAMS, *hidden]
        self.layers = nnx.List([nnx.Linear(i, o, rngs=rngs, dtype=dtype) for i, o in zip(dims[:-1], dims[1:])])
        self.output_layer = nnx.Linear(dims[-1], NUM_PARAMS, rngs=rngs, dtype=dtype,
                                       kernel_init=nnx.initializers.variance_scaling(0.01 ** 2, "fan_avg", "uniform"))
        self.mean_param = Buffer(default_mean_param(camera_scale))
        self.num_stages = num_stages

    def mlp(self, x):
        for layer in self.layers:
            x = nnx.relu(layer(x))
        return self.output_layer(x)

    def __call__(self, feat: jnp.ndarray) -> list:
        x = jnp.broadcast_to(self.mean_param[...].astype(feat.dtype), feat.shape[:-1] + (NUM_PARAMS,))
        stages = []
        for _ in range(self.num_stages):
            x = x + self.mlp(jnp.concatenate([feat, x], axis=-1))
            stages.append(x)
        return stages


class ProjectionHead(nnx.Module):
    """PeCLR/TempCLR projection head: Linear - BN - ReLU - Linear(no bias)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(in_dim, hidden_dim, rngs=rngs)
        self.bn = TorchBatchNorm(hidden_dim)
        self.fc2 = nnx.Linear(hidden_dim, out_dim, use_bias=False, rngs=rngs)

    def __call__(self, x):
        return self.fc2(nnx.relu(self.bn(self.fc1(x))))


class TempCLRModel(nnx.Module):
    """Backbone + regressor (+ projection head for contrastive pretraining)."""

    def __init__(self, *, depth: int = 50, rngs: nnx.Rngs, num_stages: int = 3,
                 hidden: Sequence[int] = (1024, 1024), projection: Optional[Sequence[int]] = None,
                 dtype=jnp.float32, camera_scale: float = 0.9, conv_impl: str = "auto"):
        self.backbone = ResNet(depth, rngs=rngs, dtype=dtype, conv_impl=conv_impl)
        feat = self.backbone.num_features
        self.regressor = IterativeRegressor(feat, rngs=rngs, hidden=hidden, num_stages=num_stages, dtype=dtype,
                                            camera_scale=camera_scale)
        self.projection_head = (ProjectionHead(feat, projection[0], projection[1], rngs=rngs)
                                if projection else None)

    def __call__(self, images: jnp.ndarray) -> list:
        """Images (B, H, W, 3) normalised -> per-stage parameter vectors [(B, 109)] * num_stages."""
        return self.regressor(self.backbone(images).astype(jnp.float32))

    def embed(self, images: jnp.ndarray) -> jnp.ndarray:
        """Contrastive embedding: projection_head(pooled backbone features)."""
        if self.projection_head is None:
            raise ValueError("TempCLRModel.embed needs a projection head (config model.projection)")
        return self.projection_head(self.backbone(images).astype(jnp.float32))


def decode(params: jnp.ndarray, mano_model: mano.ManoModel, with_mesh: bool = True,
           convention="tempclr") -> dict:
    """109-d parameters -> rotations, betas, camera, MANO vertices/joints and 2D projection.

    Joints are in the convention's order (TempCLR's own by default); proj_joints
    are normalised crop coordinates in [-1, 1].
    """
    p = split_params(params)
    wrist = rot6d_to_matrix(p["wrist_pose"][..., None, :], "interleaved")
    hand = rot6d_to_matrix(p["hand_pose"].reshape(p["hand_pose"].shape[:-1] + (15, 6)), "interleaved")
    rotmats = jnp.concatenate([wrist, hand], axis=-3)
    scale = torch_softplus(p["camera"][..., 0])
    trans = p["camera"][..., 1:3]
    fwd = mano.mano_forward if with_mesh else mano.mano_joints
    out = fwd(mano_model, rotmats, p["betas"], None, convention=convention)
    return {
        "rotmats": rotmats, "betas": p["betas"], "camera_scale": scale, "camera_translation": trans,
        "vertices": out.vertices, "joints": out.joints,
        "proj_joints": project_weak_perspective(out.joints, scale, trans),
    }
