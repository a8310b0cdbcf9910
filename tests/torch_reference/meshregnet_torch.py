"""PyTorch reference of handobjectconsist's MeshRegNet, written from shared/reference/handobjectconsist.md
(sections 1.2 - 1.7, 2 and 8), for parity tests of ``handjax.models.meshregnet`` and of the converter.

Module tree and state_dict keys as the release (section 1.7, key order as PyTorch emits it):

* ``fhb_shape`` (10) buffer (FPHAB models only; never used in forward);
* ``base_net.*``: a torchvision ResNet-18 with its unused ``fc``; forward = global mean of layer4;
* ``scaletrans_branch.{final_layer, decoder.0}`` (hand [scale, tx, ty]) and ``scaletrans_branch_obj.*``
  (object [scale, tx, ty, rx, ry, rz]): ``final_layer`` registered before ``decoder``;
* ``mano_branch.base_layer.{0,2}``, ``mano_branch.pose_reg`` (3 + 15), ``mano_branch.shape_reg.0`` (10) and the
  manopth buffers of ``mano_branch.mano_layer_right`` / ``mano_layer_left`` (PCA, ``flat_hand_mean=False``);
* ``adaptor.J_regressor`` buffer and ``adaptor.adaptor.weight`` (the same (21, 778) values; FPHAB only).

Decoding: manopth (quaternion Rodrigues with +1e-8, tips, reorder, centred on joint 9, mm) / 1000; with the
adaptor the joints are regressed from the vertices and both are re-centred on the adaptor's joint 9; hand and
object placed by ``recover_3d_proj`` (t = raw * 100 px, s = raw * 1e-4, Z0 = f s + 0.4, XY0 = (t + (W/2, H/2) -
(cx, cy)) Z0 / f); the object is R(axis-angle) @ canonical vertices + its root. Images NCHW, already in the
network's normalisation (to_tensor - 0.5). MANO arrays come from the caller (tests: the built-in hand).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tests.torch_reference.idhandmesh_torch import REORDER, TIPS, ManoLayerRef
from tests.torch_reference.resnet_torch import ResNet

TRANS_FACTOR, SCALE_FACTOR, OFF_Z = 100.0, 1e-4, 0.4


def quat_rodrigues(aa: torch.Tensor) -> torch.Tensor:
    """manopth ``batch_rodrigues``: (N, 3) axis-angle -> (N, 3, 3) through the unit quaternion, +1e-8 in the norm."""
    angle = torch.norm(aa + 1e-8, dim=1, keepdim=True)
    axis = aa / angle
    half = angle * 0.5
    w, xyz = torch.cos(half), torch.sin(half) * axis
    q = torch.cat([w, xyz], 1)
    q = q / q.norm(dim=1, keepdim=True)
    w, x, y, z = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    return torch.stack([w * w + x * x - y * y - z * z, 2 * x * y - 2 * w * z, 2 * w * y + 2 * x * z,
                        2 * w * z + 2 * x * y, w * w - x * x + y * y - z * z, 2 * y * z - 2 * w * x,
                        2 * x * z - 2 * w * y, 2 * w * x + 2 * y * z, w * w - x * x - y * y + z * z], 1).view(-1, 3, 3)


class ManoPCALayerRef(ManoLayerRef):
    """manopth ``ManoLayer(use_pca=True, ncomps=15, flat_hand_mean=False, center_idx=9)`` with zero ``th_trans``:
    (B, 3 + 15) root axis-angle + PCA coefficients, (B, 10) betas -> vertices, joints in mm, centred on joint 9."""

    def __init__(self, arrays: dict, ncomps: int = 15):
        super().__init__(arrays)
        comps = torch.as_tensor(np.asarray(arrays["hands_components"], np.float64), dtype=torch.float32)
        self.th_hands_mean = torch.as_tensor(np.asarray(arrays["hands_mean"], np.float64),
                                             dtype=torch.float32).reshape(1, 45)
        self.th_selected_comps = comps[:ncomps]

    def forward(self, pose: torch.Tensor, betas: torch.Tensor):
        b = pose.shape[0]
        hand = pose[:, 3:] @ self.th_selected_comps + self.th_hands_mean
        full = torch.cat([pose[:, :3], hand], 1)
        rot = quat_rodrigues(full.reshape(-1, 3)).reshape(b, 16, 3, 3)
        verts, joints = _lbs(self, rot, betas)
        centre = joints[:, 9:10]
        return verts - centre, joints - centre


def _lbs(layer: ManoLayerRef, rot: torch.Tensor, betas: torch.Tensor):
    """manopth's skinning (the steps of ManoLayerRef.forward, from rotation matrices), mm."""
    b = rot.shape[0]
    v_shaped = layer.th_v_template + torch.einsum("vcl,nl->nvc", layer.th_shapedirs, betas)
    j = torch.einsum("jv,nvc->njc", layer.th_J_regressor, v_shaped)
    pose_map = (rot[:, 1:] - torch.eye(3)).reshape(b, 135)
    v_posed = v_shaped + torch.einsum("vcp,np->nvc", layer.th_posedirs, pose_map)
    transforms = []
    for i in range(16):
        local = torch.zeros(b, 4, 4)
        local[:, :3, :3] = rot[:, i]
        local[:, :3, 3] = j[:, i] - (j[:, layer.parents[i]] if i else 0.0)
        local[:, 3, 3] = 1.0
        transforms.append(local if i == 0 else transforms[layer.parents[i]] @ local)
    g = torch.stack(transforms, 1)
    rest = torch.einsum("njab,njb->nja", g[:, :, :3, :3], j)
    a = g.clone()
    a[:, :, :3, 3] = g[:, :, :3, 3] - rest
    t = torch.einsum("vj,njab->nvab", layer.th_weights, a)
    v_h = torch.cat([v_posed, torch.ones(b, v_posed.shape[1], 1)], -1)
    verts = torch.einsum("nvab,nvb->nva", t, v_h)[..., :3]
    joints = torch.cat([g[:, :, :3, 3], verts[:, list(TIPS)]], 1)[:, list(REORDER)]
    return verts * 1000.0, joints * 1000.0


class AbsoluteBranchRef(nn.Module):
    def __init__(self, base: int, out: int):
        super().__init__()
        self.final_layer = nn.Linear(256, out)  # registered first, as upstream
        self.decoder = nn.Sequential(nn.Linear(base, 256), nn.ReLU())

    def forward(self, x):
        return self.final_layer(self.decoder(x))


class ManoBranchRef(nn.Module):
    def __init__(self, arrays: dict, ncomps: int = 15, use_shape: bool = True):
        super().__init__()
        self.base_layer = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU())
        self.pose_reg = nn.Linear(512, ncomps + 3)
        if use_shape:
            self.shape_reg = nn.Sequential(nn.Linear(512, 10))
        self.use_shape = use_shape
        self.mano_layer_right = ManoPCALayerRef(arrays, ncomps)
        self.mano_layer_left = ManoPCALayerRef(arrays, ncomps)  # left hands never occur (sides="right")

    def forward(self, feat):
        h = self.base_layer(feat)
        pose = self.pose_reg(h)
        shape = self.shape_reg(h) if self.use_shape else torch.zeros(feat.shape[0], 10)
        verts, joints = self.mano_layer_right(pose, shape)
        return {"verts3d": verts / 1000.0, "joints3d": joints / 1000.0, "pose": pose, "shape": shape}


class ManoAdaptorRef(nn.Module):
    def __init__(self, regressor: np.ndarray):
        super().__init__()
        self.register_buffer("J_regressor", torch.as_tensor(np.asarray(regressor, np.float32)))
        self.adaptor = nn.Linear(778, 21, bias=False)
        self.adaptor.weight.data = self.J_regressor  # same storage, frozen
        self.adaptor.weight.requires_grad = False

    def forward(self, verts):  # (B, 778, 3) -> (B, 21, 3)
        return self.adaptor(verts.permute(0, 2, 1)).permute(0, 2, 1)


def recover_3d_proj(points, K, raw_scale, raw_trans, input_hw):
    h, w = input_hw
    s = raw_scale.view(-1, 1, 1) * SCALE_FACTOR
    t = raw_trans.unsqueeze(1) * TRANS_FACTOR
    f = K[:, :1, :1]
    z0 = f * s + OFF_Z
    centre = torch.tensor([w / 2.0, h / 2.0], dtype=points.dtype)
    xy0 = (t + centre - K[:, :2, 2].unsqueeze(1)) * z0 / f
    root = torch.cat([xy0, z0], 2)
    return points + root, root


class MeshRegNetRef(nn.Module):
    def __init__(self, arrays: dict, adaptor: np.ndarray | None = None, fhb_shape: np.ndarray | None = None,
                 use_shape: bool = True):
        super().__init__()
        if adaptor is not None:
            self.register_buffer("fhb_shape", torch.as_tensor(np.asarray(fhb_shape, np.float32)))
        self.base_net = ResNet(18)
        self.scaletrans_branch = AbsoluteBranchRef(512, 3)
        self.scaletrans_branch_obj = AbsoluteBranchRef(512, 6)
        self.mano_branch = ManoBranchRef(arrays, use_shape=use_shape)
        self.adaptor = ManoAdaptorRef(adaptor) if adaptor is not None else None

    def features(self, x):
        n = self.base_net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        x = n.layer4(n.layer3(n.layer2(n.layer1(x))))
        return x.mean(3).mean(2)

    def forward(self, image, K, obj_canverts):
        feat = self.features(image)
        mano = self.mano_branch(feat)
        joints, verts = mano["joints3d"], mano["verts3d"]
        if self.adaptor is not None:
            joints = self.adaptor(verts)
            centre = joints[:, 9:10]
            joints, verts = joints - centre, verts - centre
        hw = tuple(image.shape[2:])
        st = self.scaletrans_branch(feat)
        n = joints.shape[1]
        placed, _ = recover_3d_proj(torch.cat([joints, verts], 1), K, st[:, 0], st[:, 1:3], hw)
        ost = self.scaletrans_branch_obj(feat)
        rot = quat_rodrigues(ost[:, 3:])
        rotated = rot.bmm(obj_canverts.transpose(1, 2)).transpose(1, 2)
        obj, _ = recover_3d_proj(rotated, K, ost[:, 0], ost[:, 1:3], hw)
        return {"joints": placed[:, :n], "verts": placed[:, n:], "obj_verts": obj, "pose": mano["pose"],
                "shape": mano["shape"]}


def save_release(model: MeshRegNetRef, path, epoch: int = 200) -> None:
    """torch.save in libyana's format: {'epoch', 'network', 'state_dict', 'optimizer', 'scheduler' (a pickled
    StepLR object)} (section 8)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=5e-5)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=1.0)
    torch.save({"epoch": epoch, "network": "correspnet", "state_dict": model.state_dict(),
                "optimizer": opt.state_dict(), "scheduler": sched}, path)
