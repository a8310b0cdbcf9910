"""handobjectconsist's MeshRegNet (hassony2/handobjectconsist ``meshreg/models/meshregnet.py``):
a whole-frame regressor of a MANO hand and the placement of a known rigid object.

Network (registered as head ``meshreg``; the backbone is any registered one, upstream ResNet-18):
image (B, H, W, 3) -> backbone -> pooled feature (B, F) (global mean, as upstream) ->

* MANO branch: ``base_layer`` Linear(F, 512) ReLU Linear(512, 512) ReLU, ``pose_reg`` Linear(512,
  3 + ncomps) (3 global axis-angle + PCA coefficients), ``shape_reg`` Linear(512, 10) (betas);
* hand placement ``scaletrans``: Linear(F, 256) ReLU Linear(256, 3) -> [scale, tx, ty];
* object placement ``scaletrans_obj``: Linear(F, 256) ReLU Linear(256, 6) -> [scale, tx, ty, rx, ry, rz].

Decoding (:func:`decode`), upstream's ``recover_3d_proj`` for the hand and the object alike:
``s = raw_scale * scale_factor``, ``t = raw_trans * trans_factor`` (pixels), root depth
``Z0 = K[0, 0] s + depth_offset`` and ``XY0 = (t + (W/2, H/2) - (cx, cy)) Z0 / K[0, 0]``: the root
projects to the image centre + t (exactly when fx = fy). Upstream: trans_factor 100, scale_factor
1e-4, depth_offset 0.4 m.

* Hand: PCA pose with ``flat_hand_mean=False`` (zero coefficients = the MANO mean pose), joints
  in manopth's order with its fingertips (or another convention's tips), centred on joint 9
  (middle MCP), metres, then placed at [XY0, Z0]. An optional skeleton adaptor (FPHAB: a (21, 778)
  vertex -> joint regressor) replaces the joints and re-centres joints and vertices on its joint 9.
* Object: canonical vertices (bounding-box centred, given per sample: the known-object setting)
  rotated by the axis-angle (rx, ry, rz) and placed at [XY0, Z0].

Images: the batches are ImageNet-normalised; ``input_norm="mean0.5"`` turns them into upstream's
``to_tensor - 0.5`` before the backbone (``"imagenet"`` keeps them).
"""
from __future__ import annotations

from typing import Optional

import jax.numpy as jnp
from flax import nnx, struct

from handjax import mano
from handjax.geometry import axis_angle_to_matrix, project_perspective
from handjax.models.hand_output import HandOutput, make_hand_output
from handjax.models.registry import build, register

from handjax.models.input_norm import from_imagenet
INPUT_NORMS = ("mean0.5", "imagenet")
CENTER_IDX = 9  # middle-finger MCP in manopth's (OpenPose) joint order
# upstream's recover_3d_proj constants (obj_trans_factor, obj_scale_factor, off_z), used for hand and object
UPSTREAM_PLACEMENT = dict(trans_factor=100.0, scale_factor=1e-4, depth_offset=0.4)


class Counter(nnx.Variable):
    """A non-trained integer state (e.g. the number of consistency batches seen, for the lambda ramp)."""


@struct.dataclass
class ObjectOutput:
    """A placed rigid object: vertices (B, Vo, 3) camera frame (metres); vertices2d (B, Vo, 2) pixels;
    rot (B, 3, 3) canonical -> camera rotation; transl (B, 3) camera position of the canonical origin."""

    vertices: jnp.ndarray
    vertices2d: jnp.ndarray
    rot: jnp.ndarray
    transl: jnp.ndarray


@struct.dataclass
class MeshRegOutput:
    """What :func:`decode` returns: the hand (the system layer's contract), the object (its own entry) and
    the raw MANO parameters the priors regularise: pca (B, ncomps), betas (B, 10)."""

    hand: HandOutput
    object: Optional[ObjectOutput]
    pca: jnp.ndarray
    betas: jnp.ndarray


def _mlp_branch(din: int, hidden: int, dout: int, rngs: nnx.Rngs):
    return nnx.Linear(din, hidden, rngs=rngs), nnx.Linear(hidden, dout, rngs=rngs)


class MeshRegHeads(nnx.Module):
    """The three MeshRegNet branches on a pooled feature (B, F) -> dict of raw outputs."""

    def __init__(self, num_features: int, *, rngs: nnx.Rngs, ncomps: int = 15, mano_neurons=(512, 512),
                 use_shape: bool = True):
        dims = (num_features,) + tuple(int(n) for n in mano_neurons)
        self.base_layer = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(dims[:-1], dims[1:])])
        self.pose_reg = nnx.Linear(dims[-1], 3 + ncomps, rngs=rngs)
        self.shape_reg = nnx.Linear(dims[-1], 10, rngs=rngs) if use_shape else None
        self.scaletrans_decoder, self.scaletrans_final = _mlp_branch(num_features, 256, 3, rngs)
        self.scaletrans_obj_decoder, self.scaletrans_obj_final = _mlp_branch(num_features, 256, 6, rngs)
        self.ncomps = ncomps

    def __call__(self, feat: jnp.ndarray) -> dict:
        h = feat
        for layer in self.base_layer:
            h = nnx.relu(layer(h))
        pose = self.pose_reg(h)
        betas = self.shape_reg(h) if self.shape_reg is not None else jnp.zeros(pose.shape[:1] + (10,), pose.dtype)
        hand_st = self.scaletrans_final(nnx.relu(self.scaletrans_decoder(feat)))
        obj_st = self.scaletrans_obj_final(nnx.relu(self.scaletrans_obj_decoder(feat)))
        return {"pose": pose, "betas": betas, "hand_scaletrans": hand_st, "obj_scaletrans": obj_st}


@register("head", "meshreg")
def _meshreg_heads(**kwargs) -> MeshRegHeads:
    return MeshRegHeads(**kwargs)


class MeshRegNet(nnx.Module):
    """Backbone (registered, by name) + :class:`MeshRegHeads`; ``__call__(images)`` -> raw outputs."""

    def __init__(self, backbone: str = "resnet18", *, rngs: nnx.Rngs, ncomps: int = 15, mano_neurons=(512, 512),
                 use_shape: bool = True, input_norm: str = "mean0.5", conv_impl: str = "auto",
                 adaptor: Optional[jnp.ndarray] = None):
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"config key model.input_norm must be one of {INPUT_NORMS}, got {input_norm!r}")
        self.backbone = build("backbone", backbone, config_key="model.backbone", rngs=rngs, conv_impl=conv_impl)
        self.heads = build("head", "meshreg", num_features=self.backbone.num_features, rngs=rngs, ncomps=ncomps,
                           mano_neurons=mano_neurons, use_shape=use_shape)
        self.input_norm = input_norm
        # FPHAB skeleton adaptor (frozen: a Counter-like non-Param variable, never trained)
        self.adaptor = None if adaptor is None else nnx.Variable(jnp.asarray(adaptor, jnp.float32))
        self.consist_batches = Counter(jnp.zeros((), jnp.int32))

    def normalize(self, images: jnp.ndarray) -> jnp.ndarray:
        """ImageNet-normalised batches -> the network's input normalisation."""
        if self.input_norm == "imagenet":
            return images
        return from_imagenet(images, -0.5)

    def __call__(self, images: jnp.ndarray) -> dict:
        return self.heads(self.backbone(self.normalize(images)))


# ----------------------------------------------------------------------------- decoding
def model_convention(tips: str = "manopth") -> mano.Convention:
    """manopth's joint order and centring on joint 9, in metres, with ``tips``' fingertip vertices."""
    base = mano.get_convention(tips)
    return mano.get_convention("manopth").replace(name=f"meshreg_{tips}", tip_ids=base.tip_ids, units="m",
                                                  center_idx=CENTER_IDX, center_only_without_transl=False)


def place(points: jnp.ndarray, scaletrans: jnp.ndarray, K: jnp.ndarray, image_hw, *, trans_factor: float,
          scale_factor: float, depth_offset: float) -> tuple:
    """upstream ``recover_3d_proj``: root-centred points (B, N, 3) + raw [scale, tx, ty] (B, 3) -> camera-space
    points (B, N, 3) and the root position (B, 3) (see the module docstring)."""
    h, w = image_hw
    s = scaletrans[:, 0] * scale_factor
    t = scaletrans[:, 1:3] * trans_factor
    f = K[:, 0, 0]
    z0 = f * s + depth_offset
    centre = jnp.asarray([w / 2.0, h / 2.0], points.dtype)
    xy0 = (t + centre - K[:, :2, 2]) * (z0 / f)[:, None]
    root = jnp.concatenate([xy0, z0[:, None]], axis=-1)
    return points + root[:, None, :], root


def decode(raw: dict, K: jnp.ndarray, image_hw, hand_model, *, object_canonical: Optional[jnp.ndarray] = None,
           convention: mano.Convention, trans_factor: float, scale_factor: float, depth_offset: float,
           adaptor: Optional[jnp.ndarray] = None) -> MeshRegOutput:
    """Raw MeshRegNet outputs -> :class:`MeshRegOutput`.

    raw: ``pose`` (B, 3 + k), ``betas`` (B, 10), ``hand_scaletrans`` (B, 3), ``obj_scaletrans`` (B, 6);
    K (B, 3, 3) the input image's intrinsics; image_hw (H, W) static; object_canonical (B, Vo, 3) the known
    objects' bounding-box-centred vertices (None: no object). Joints in ``convention``'s order.
    """
    pose, betas = raw["pose"], raw["betas"]
    rotmats = mano.from_pca(hand_model, pose[:, :3], pose[:, 3:], flat_hand_mean=False)
    out = mano.mano_forward(hand_model, rotmats, betas, convention=convention)
    joints, verts = out.joints, out.vertices
    if adaptor is not None:  # FPHAB skeleton: joints regressed from the vertices, re-centred on its joint 9
        joints = jnp.einsum("jv,bvc->bjc", adaptor, verts)
        centre = joints[:, CENTER_IDX: CENTER_IDX + 1]
        joints, verts = joints - centre, verts - centre
    factors = dict(trans_factor=trans_factor, scale_factor=scale_factor, depth_offset=depth_offset)
    n = joints.shape[1]
    placed, _ = place(jnp.concatenate([joints, verts], axis=1), raw["hand_scaletrans"], K, image_hw, **factors)
    camera = jnp.concatenate([K, jnp.zeros(K.shape[:-1] + (1,), K.dtype)], axis=-1)
    hand = make_hand_output(placed[:, :n], camera, rotmats, betas, placed[:, n:], convention=convention.name)
    obj = None
    if object_canonical is not None:
        ost = raw["obj_scaletrans"]
        rot = axis_angle_to_matrix(ost[:, 3:6])
        rotated = jnp.einsum("bij,bvj->bvi", rot, object_canonical)
        verts_o, root = place(rotated, ost[:, :3], K, image_hw, **factors)
        obj = ObjectOutput(vertices=verts_o, vertices2d=project_perspective(verts_o, K), rot=rot, transl=root)
    return MeshRegOutput(hand=hand, object=obj, pca=pose[:, 3:], betas=betas)
