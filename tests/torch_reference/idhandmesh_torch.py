"""PyTorch reference of IdHandMesh's three MANO-based models, written from shared/reference/idhandmesh.md.

Module tree and state_dict keys as the release (``src/mano_based_model.py``):

* ``feature_extractor.*``: a torchvision ResNet WITH its ImageNet ``fc`` (the 1000-d logits are the feature);
* ``pose_6d_extractor.{0,1,2}.{0,3,6,9}.{weight,bias}``: ``make_linear_layers_with_dropout`` MLPs
  (Linear-ReLU-Dropout(0) ... Linear) on concat(feature, pose 96);
* ``shape_extractor.{0,3,6,9}.*`` (baseline / confidence models): the betas MLP;
* ``conf_branch.0.*`` (confidence model, ``conf_hidden_layers=1``): Linear(feature, 1) on the DETACHED feature;
* buffers ``th_selected_comps`` (45, 45), ``th_hands_mean`` (1, 45), ``j_regressor`` (1, 21, 778) and the manopth
  layer's ``mano_layer.th_*`` buffers (MANO-derived: a converter must not copy them).

Forward: baseline / confidence models start from ``eye(3)[..., :2]`` (COLUMNS sliced: [1,0,0,1,0,0] per joint)
and add each stage's output; the identity-aware model starts from the first two ROWS of I and composes
``R(delta) @ R(pose)`` with the class's eps-1e-6 Gram-Schmidt. The last stage's 6D rows go through pytorch3d's
``rotation_6d_to_matrix`` -> ``matrix_to_axis_angle`` (quaternion path) -> manopth (axis-angle Rodrigues, LBS,
flat hand mean, millimetres, tips 745/317/444/556/673, manopth joint order), and the mesh / joints are divided by
1000 and by 0.2 (units of 0.2 m). MANO arrays come from the caller (tests: the built-in hand).
Images are NCHW.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tests.torch_reference.resnet_torch import ResNet

TIPS = (745, 317, 444, 556, 673)
REORDER = (0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20)


# ----------------------------------------------------------------------------- rotations (pytorch3d conventions)
def rotation_6d_to_matrix(d6: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """(..., 6) -> (..., 3, 3): ROWS b1, b2, b3 = b1 x b2 (Gram-Schmidt), F.normalize with ``eps``."""
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = F.normalize(a1, dim=-1, eps=eps)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1, eps=eps)
    return torch.stack((b1, b2, torch.cross(b1, b2, dim=-1)), dim=-2)


def matrix_to_rotation_6d(m: torch.Tensor) -> torch.Tensor:
    return m[..., :2, :].clone().reshape(m.shape[:-2] + (6,))


def _sqrt_positive_part(x: torch.Tensor) -> torch.Tensor:
    """sqrt(max(0, x)) with a zero (not infinite) gradient where x <= 0, as pytorch3d."""
    out = torch.zeros_like(x)
    positive = x > 0
    out[positive] = torch.sqrt(x[positive])
    return out


def matrix_to_quaternion(m: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> (..., 4) (w, x, y, z): the best-conditioned of the four candidate formulas."""
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    q_abs = _sqrt_positive_part(torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22,
                                             1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1))
    cands = torch.stack([
        torch.stack([q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], -1),
        torch.stack([m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20], -1),
        torch.stack([m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21], -1),
        torch.stack([m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2], -1),
    ], -2) / (2.0 * torch.clamp(q_abs, min=0.1))[..., None]
    best = q_abs.argmax(-1)
    return torch.gather(cands, -2, best[..., None, None].expand(best.shape + (1, 4)))[..., 0, :]


def quaternion_to_axis_angle(q: torch.Tensor) -> torch.Tensor:
    norms = torch.norm(q[..., 1:], dim=-1, keepdim=True)
    half = torch.atan2(norms, q[..., :1])
    angle = 2 * half
    small = angle.abs() < 1e-6
    sin_half_over_angle = torch.where(small, 0.5 - angle * angle / 48, torch.sin(half) / torch.where(small, 1.0, angle))
    return q[..., 1:] / sin_half_over_angle


def matrix_to_axis_angle(m: torch.Tensor) -> torch.Tensor:
    return quaternion_to_axis_angle(matrix_to_quaternion(m))


def rodrigues(aa: torch.Tensor) -> torch.Tensor:
    """(N, 3) axis-angle -> (N, 3, 3), manopth style (angle + 1e-8 in the axis normalisation)."""
    angle = torch.norm(aa + 1e-8, dim=-1, keepdim=True)
    axis = aa / angle
    c, s = torch.cos(angle)[..., None], torch.sin(angle)[..., None]
    x, y, z = axis[..., 0], axis[..., 1], axis[..., 2]
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(-1, 3, 3)
    eye = torch.eye(3, dtype=aa.dtype).expand_as(k)
    return eye + s * k + (1 - c) * (k @ k)


# ----------------------------------------------------------------------------- manopth-like MANO layer
class ManoLayerRef(nn.Module):
    """manopth ``ManoLayer(use_pca=False, flat_hand_mean=True)``: (B, 48) axis-angle, (B, 10) -> vertices (B, 778, 3)
    and 21 joints in mm, MANO frame (no centring, no translation)."""

    def __init__(self, arrays: dict):
        super().__init__()
        f64 = lambda k: torch.as_tensor(np.asarray(arrays[k], np.float64), dtype=torch.float32)
        self.register_buffer("th_v_template", f64("v_template")[None])
        self.register_buffer("th_shapedirs", f64("shapedirs"))
        self.register_buffer("th_posedirs", f64("posedirs"))
        self.register_buffer("th_J_regressor", f64("J_regressor"))
        self.register_buffer("th_weights", f64("weights"))
        self.register_buffer("th_faces", torch.as_tensor(np.asarray(arrays["f"], np.int64)))
        self.register_buffer("th_betas", torch.zeros(1, 10))
        self.register_buffer("th_hands_mean", torch.zeros(1, 45))  # flat_hand_mean=True
        self.register_buffer("th_comps", f64("hands_components"))
        self.register_buffer("th_selected_comps", f64("hands_components")[:6])
        parents = np.asarray(arrays["kintree_table"])[0].astype(np.int64)
        self.parents = [-1] + [int(p) for p in parents[1:]]

    def forward(self, pose: torch.Tensor, betas: torch.Tensor):
        b = pose.shape[0]
        rot = rodrigues(pose.reshape(-1, 3)).reshape(b, 16, 3, 3)
        v_shaped = self.th_v_template + torch.einsum("vcl,nl->nvc", self.th_shapedirs, betas)
        j = torch.einsum("jv,nvc->njc", self.th_J_regressor, v_shaped)
        pose_map = (rot[:, 1:] - torch.eye(3)).reshape(b, 135)
        v_posed = v_shaped + torch.einsum("vcp,np->nvc", self.th_posedirs, pose_map)
        transforms = []
        for i in range(16):
            local = torch.zeros(b, 4, 4)
            local[:, :3, :3] = rot[:, i]
            local[:, :3, 3] = j[:, i] - (j[:, self.parents[i]] if i else 0.0)
            local[:, 3, 3] = 1.0
            transforms.append(local if i == 0 else transforms[self.parents[i]] @ local)
        g = torch.stack(transforms, 1)  # (B, 16, 4, 4) posed joint frames
        rest = torch.einsum("njab,njb->nja", g[:, :, :3, :3], j)
        a = g.clone()
        a[:, :, :3, 3] = g[:, :, :3, 3] - rest
        t = torch.einsum("vj,njab->nvab", self.th_weights, a)
        v_h = torch.cat([v_posed, torch.ones(b, v_posed.shape[1], 1)], -1)
        verts = torch.einsum("nvab,nvb->nva", t, v_h)[..., :3]
        joints = torch.cat([g[:, :, :3, 3], verts[:, list(TIPS)]], 1)[:, list(REORDER)]
        return verts * 1000.0, joints * 1000.0


# ----------------------------------------------------------------------------- the models
def make_linear_layers_with_dropout(dims, dropout_prob: float = 0.0) -> nn.Sequential:
    layers = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers += [nn.ReLU(inplace=True), nn.Dropout(dropout_prob)]
    return nn.Sequential(*layers)


class IdHandMeshRef(nn.Module):
    """kind: "baseline" (``..._Without_GT_Shape``), "confidence" (``..._With_Conf``, conf_hidden_layers 1) or
    "identity" (``MANO_Based_Model_Iterative_Pose``, pose_agg_mode 'multiply')."""

    def __init__(self, kind: str, mano_arrays: dict, depth: int = 50, feature_dim: int = 1000, iteration: int = 3,
                 pose_hidden=(512, 256, 128), shape_hidden=(512, 256, 128)):
        super().__init__()
        self.kind = kind
        self.feature_extractor = ResNet(depth, num_classes=feature_dim)
        self.pose_6d_extractor = nn.ModuleList([make_linear_layers_with_dropout(
            [feature_dim + 96, *pose_hidden, 96], 0.0) for _ in range(iteration)])
        if kind != "identity":
            self.shape_extractor = make_linear_layers_with_dropout([feature_dim, *shape_hidden, 10], 0.0)
        if kind == "confidence":
            self.conf_branch = nn.Sequential(nn.Linear(feature_dim, 1))
        self.mano_layer = ManoLayerRef(mano_arrays)
        comps = torch.as_tensor(np.asarray(mano_arrays["hands_components"]), dtype=torch.float32)
        self.register_buffer("th_selected_comps", comps[:45])
        self.register_buffer("th_hands_mean", torch.as_tensor(np.asarray(mano_arrays["hands_mean"]),
                                                              dtype=torch.float32)[None])
        jr = np.zeros((21, 778), np.float32)
        jr[:16] = np.asarray(mano_arrays["J_regressor"])
        jr[np.arange(16, 21), list(TIPS)] = 1.0
        self.register_buffer("j_regressor", torch.as_tensor(jr)[None])

    @staticmethod
    def _multiply(delta, pose):
        b = delta.shape[0]
        r = rotation_6d_to_matrix(delta.reshape(b, 16, 6), 1e-6) @ rotation_6d_to_matrix(pose.reshape(b, 16, 6), 1e-6)
        return matrix_to_rotation_6d(r).reshape(b, 96)

    def forward(self, images: torch.Tensor) -> dict:
        feat = self.feature_extractor(images)
        b = feat.shape[0]
        eye = torch.eye(3).expand(b, 16, 3, 3)
        pose = (matrix_to_rotation_6d(eye) if self.kind == "identity" else eye[:, :, :, :2]).reshape(b, 96)
        poses = []
        for mlp in self.pose_6d_extractor:
            delta = mlp(torch.cat([feat, pose], -1))
            pose = self._multiply(delta, pose) if self.kind == "identity" else pose + delta
            poses.append(pose)
        out = {"feature": feat, "pose6d": poses[::-1]}
        if self.kind != "identity":
            out["betas"] = self.shape_extractor(feat)
        if self.kind == "confidence":
            out["conf"] = self.conf_branch(feat.detach())[:, 0]
        return out

    def mesh(self, pose6d: torch.Tensor, betas: torch.Tensor):
        """The last stage's 6D -> axis-angle (pytorch3d) -> manopth; (vertices, joints) in units of 0.2 m."""
        b = pose6d.shape[0]
        aa = matrix_to_axis_angle(rotation_6d_to_matrix(pose6d.reshape(b, 16, 6))).reshape(b, 48)
        verts, joints = self.mano_layer(aa, betas)
        return verts / 1000.0 / 0.2, joints / 1000.0 / 0.2


def save_release(model: IdHandMeshRef, path) -> None:
    """torch.save in the release's checkpoint format (``utils/writer.py::save_checkpoint``)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [5, 10], 0.1)
    torch.save({"epoch": 16, "model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict(),
                "scheduler_state_dict": sched.state_dict()}, path)
