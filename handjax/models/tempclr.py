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

import jax.numpy as jnp
import numpy as np
from flax import nnx

from handjax import mano
from handjax.geometry import rot6d_to_matrix, torch_softplus, weak_perspective_matrix
from handjax.models import registry
from handjax.models.hand_output import HandOutput, make_hand_output
from handjax.models.resnet import TorchBatchNorm

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


@registry.register("head", "iterative_mano")
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


@registry.register("head", "projection")
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

    def __init__(self, *, backbone: str = "resnet50", rngs: nnx.Rngs, num_stages: int = 3,
                 hidden: Sequence[int] = (1024, 1024), projection: Optional[Sequence[int]] = None,
                 dtype=jnp.float32, camera_scale: float = 0.9, conv_impl: str = "auto"):
        self.backbone = registry.build("backbone", backbone, config_key="model.backbone", rngs=rngs, dtype=dtype,
                                       conv_impl=conv_impl)
        feat = self.backbone.num_features
        self.regressor = registry.build("head", "iterative_mano", feat_dim=feat, rngs=rngs, hidden=hidden,
                                        num_stages=num_stages, dtype=dtype, camera_scale=camera_scale)
        self.projection_head = (registry.build("head", "projection", in_dim=feat, hidden_dim=projection[0],
                                               out_dim=projection[1], rngs=rngs) if projection else None)

    def __call__(self, images: jnp.ndarray) -> list:
        """Images (B, H, W, 3) normalised -> per-stage parameter vectors [(B, 109)] * num_stages."""
        return self.regressor(self.backbone(images).astype(jnp.float32))

    def embed(self, images: jnp.ndarray) -> jnp.ndarray:
        """Contrastive embedding: projection_head(pooled backbone features)."""
        if self.projection_head is None:
            raise ValueError("TempCLRModel.embed needs a projection head (config model.projection)")
        return self.projection_head(self.backbone(images).astype(jnp.float32))


def weak_perspective(params: jnp.ndarray) -> tuple:
    """The camera part of the parameters: (scale (B,) = softplus(raw), translation (B, 2))."""
    cam = split_params(params)["camera"]
    return torch_softplus(cam[..., 0]), cam[..., 1:3]


def decode(params: jnp.ndarray, mano_model: mano.ManoModel, image_size: int, with_mesh: bool = True,
           convention: str = "tempclr") -> HandOutput:
    """109-d parameters -> the hand-output contract (``handjax.models.hand_output``).

    Joints / vertices are MANO's (no translation: the weak-perspective camera carries it),
    joints in the convention's order (TempCLR's own by default); ``camera`` is the affine crop
    camera of ``x_n = s (X[:2] + t)``, so ``joints2d = (x_n + 1) S / 2`` in crop pixels.
    """
    p = split_params(params)
    wrist = rot6d_to_matrix(p["wrist_pose"][..., None, :], "interleaved")
    hand = rot6d_to_matrix(p["hand_pose"].reshape(p["hand_pose"].shape[:-1] + (15, 6)), "interleaved")
    rotmats = jnp.concatenate([wrist, hand], axis=-3)
    scale, trans = weak_perspective(params)
    fwd = mano.mano_forward if with_mesh else mano.mano_joints
    out = fwd(mano_model, rotmats, p["betas"], None, convention=convention)
    return make_hand_output(out.joints, weak_perspective_matrix(scale, trans, image_size), rotmats, p["betas"],
                            out.vertices if with_mesh else None, convention=convention)
