"""InterWild releases (facebookresearch/InterWild ``snapshot_{epoch}.pth``) -> handjax model-only checkpoints.

``common/base.py::save_model`` writes ``torch.save({'epoch', 'network', 'optimizer'})`` with the
``DataParallel`` state dict (every key prefixed ``module.``, stripped here) and without ``mano_layer`` keys.
810 tensors (interwild.md 1.10); every one is used or ignored with a reason:

=========================================================  ==========================================  =========
InterWild key                                              handjax path (``InterWildModel``)            transform
=========================================================  ==========================================  =========
``body_backbone.*`` (torchvision names, no fc)             ``body_backbone.*``                          torchvision
``body_box_net.deconv.{0,3,6}.weight`` (in, out, 4, 4)     ``body_box_net.deconv.{0,1,2}`` (4,4,in,out)  deconv
``body_box_net.deconv.{1,4,7}.*`` BN                       ``body_box_net.deconv_bn.{0,1,2}.*``         bn
``body_box_net.bbox_center.0.*``                           ``body_box_net.bbox_center.*``               conv
``body_box_net.{r,l}hand_size.{0,2}.*``                    ``body_box_net.{r,l}hand_size.{0,1}.*``      linear
``hand_roi_net.backbone.*``                                ``hand_backbone.*``                          torchvision
``hand_position_net.conv.0.*``                             ``hand_position_net.conv.*``                 conv
``hand_rotation_net.conv.0.*`` / ``conv.1.*`` BN           ``hand_rotation_net.conv.*`` / ``.bn.*``     conv / bn
``hand_rotation_net.{root_pose,pose,shape,cam}_out.0.*``   ``hand_rotation_net.<same>.*``               linear
``hand_trans_net.backbone.*`` (ResNet-18; conv1/bn1 are    ``hand_trans_net.backbone.*``                torchvision
stored but unused, as upstream)
``hand_trans_net.conv.0.*`` / ``conv.1.*`` BN              ``hand_trans_net.conv.*`` / ``.bn.*``        conv / bn
``hand_trans_net.fc.0.*``                                  ``hand_trans_net.fc.*``                      linear
=========================================================  ==========================================  =========

Ignored with reasons: BatchNorm step counters, the optimizer state (not a model weight), the paper-era learnable
``joint_regressor`` (unused by the released code), any MANO buffer. Channel orders are kept: PositionNet's output
channel ``j * D + d`` and TransNet's input channel ``j * 64 + z`` (right hand then left) map one to one onto the
NHWC channel axis. Sizes (backbone depths, deconvolution / rotation widths, depth bins, heatmap size) are read
from the shapes and saved in the metadata; evaluate with ``configs/interwild.py:recipe=paper`` and
``--config.eval.checkpoint=<out> --config.mano.model_path=<MANO folder>``.
"""
from __future__ import annotations

import os
from typing import Mapping

import numpy as np
from flax import nnx

from handjax.convert.mapping import Ignore, Rule
from handjax.convert.rules_torchvision import _bn_rules, torchvision_resnet_rules
from handjax.convert.common import ConversionReport, fill_from_state_dict, open_release, write_conversion
from handjax.convert.tempclr import detect_resnet_depth
from handjax.models import interwild as iw

CONVERTER = "handjax.convert.interwild.convert_interwild"


def _deconv(x: np.ndarray) -> np.ndarray:
    """ConvTranspose2d (in, out, kH, kW) -> (kH, kW, in, out) (``conv_transpose_torch`` flips it itself)."""
    return x.transpose(2, 3, 0, 1)


def model_config(state_dict: Mapping[str, np.ndarray], source_name: str = "state dict") -> dict:
    """Sizes read from the shapes (a missing key is an error naming it)."""
    def shape(key):
        if key not in state_dict:
            raise ValueError(f"{source_name}: no key {key!r}: not an InterWild network state dict")
        return tuple(np.shape(state_dict[key]))

    pos = shape("hand_position_net.conv.0.weight")[0]
    trans_in = shape("hand_trans_net.conv.0.weight")[1]
    if pos % iw.NUM_JOINTS or trans_in % (2 * iw.NUM_JOINTS):
        raise ValueError(f"{source_name}: PositionNet / TransNet channel counts {pos} / {trans_in} are not multiples "
                         f"of {iw.NUM_JOINTS} joints")
    return dict(body_depth=detect_resnet_depth(state_dict, "body_backbone.", source_name),
                hand_depth=detect_resnet_depth(state_dict, "hand_roi_net.backbone.", source_name),
                trans_depth=detect_resnet_depth(state_dict, "hand_trans_net.backbone.", source_name),
                deconv_channels=shape("body_box_net.deconv.0.weight")[1],
                rot_channels=shape("hand_rotation_net.conv.0.weight")[0],
                depth_bins=pos // iw.NUM_JOINTS, trans_hm=trans_in // (2 * iw.NUM_JOINTS))


def build_model(cfg: dict, geometry: iw.Geometry = None, abstract: bool = False, seed: int = 0):
    g = geometry or iw.Geometry(depth_bins=cfg["depth_bins"], trans_hm=cfg["trans_hm"])
    make = lambda: iw.InterWildModel(g, body_backbone=f"resnet{cfg['body_depth']}",  # noqa: E731
                                     hand_backbone=f"resnet{cfg['hand_depth']}",
                                     trans_backbone=f"resnet{cfg['trans_depth']}",
                                     deconv_channels=cfg["deconv_channels"], rot_channels=cfg["rot_channels"],
                                     rngs=nnx.Rngs(seed))
    return nnx.eval_shape(make) if abstract else make()


def _conv_bias(src: str, dst: str, bn: str = "") -> list:
    rules = [Rule(rf"{src}\.0\.weight", f"{dst}.kernel", "conv"), Rule(rf"{src}\.0\.bias", f"{dst}.bias")]
    return rules + (_bn_rules(rf"{src}\.1", bn) if bn else [])


def _linear(src: str, dst: str) -> list:
    return [Rule(rf"{src}\.weight", f"{dst}.kernel", "linear"), Rule(rf"{src}\.bias", f"{dst}.bias")]


def interwild_rules() -> list:
    """The strict mapping (module docstring)."""
    rules = [
        Ignore(r"(?:.*\.)?num_batches_tracked", "BatchNorm step counter: not used at inference"),
        Ignore(r"joint_regressor\.(?:weight|bias)", "paper-era learnable joint regressor: unused by the released "
                                                    "code (upstream loads with strict=False)"),
        Ignore(r"mano_layer.*", "MANO layer: licensed; MANO comes from the user's file at run time"),
        *torchvision_resnet_rules("body_backbone.", "body_backbone"),
        *torchvision_resnet_rules("hand_roi_net.backbone.", "hand_backbone"),
        *torchvision_resnet_rules("hand_trans_net.backbone.", "hand_trans_net.backbone"),
        Rule(r"body_box_net\.deconv\.(0|3|6)\.weight",
             lambda m: ("body_box_net", "deconv", str(int(m.group(1)) // 3)), _deconv),
    ]
    for i, t in ((1, 0), (4, 1), (7, 2)):
        rules += _bn_rules(rf"body_box_net\.deconv\.{i}", f"body_box_net.deconv_bn.{t}")
    rules += _conv_bias(r"body_box_net\.bbox_center", "body_box_net.bbox_center")
    for side in ("rhand_size", "lhand_size"):
        rules += _linear(rf"body_box_net\.{side}\.0", f"body_box_net.{side}.0")
        rules += _linear(rf"body_box_net\.{side}\.2", f"body_box_net.{side}.1")
    rules += _conv_bias(r"hand_position_net\.conv", "hand_position_net.conv")
    rules += _conv_bias(r"hand_rotation_net\.conv", "hand_rotation_net.conv", "hand_rotation_net.bn")
    for head in ("root_pose_out", "pose_out", "shape_out", "cam_out"):
        rules += _linear(rf"hand_rotation_net\.{head}\.0", f"hand_rotation_net.{head}")
    rules += _conv_bias(r"hand_trans_net\.conv", "hand_trans_net.conv", "hand_trans_net.bn")
    rules += _linear(r"hand_trans_net\.fc\.0", "hand_trans_net.fc")
    return rules


def interwild_model_from_state_dict(state_dict: Mapping[str, np.ndarray], source_name: str = "state dict",
                                    geometry: iw.Geometry = None):
    """``(model, cfg, MappingReport)``: an InterWildModel holding every tensor of the state dict."""
    cfg = model_config(state_dict, source_name)
    model, report = fill_from_state_dict(build_model(cfg, geometry, abstract=True), state_dict, interwild_rules(),
                                         source_name=source_name)
    return model, cfg, report


def convert_interwild(checkpoint: str | os.PathLike, out_dir: str | os.PathLike) -> ConversionReport:
    """Convert ``snapshot_{epoch}.pth`` (``{'epoch', 'network', 'optimizer'}``) into a model-only checkpoint."""
    release = open_release(checkpoint, out_dir, expected="snapshot_<epoch>.pth", nested_keys=("network",))
    path = release.path
    model, cfg, mapping = interwild_model_from_state_dict(release.state_dict, source_name=path)
    meta = dict(cfg, system="interwild", source=path, epoch=release.int_entry("epoch"), converter=CONVERTER)
    notes = [f"InterWild: body ResNet-{cfg['body_depth']}, hand ResNet-{cfg['hand_depth']}, TransNet "
             f"ResNet-{cfg['trans_depth']}, {cfg['depth_bins']} depth bins, {cfg['trans_hm']}^3 heatmaps"]
    if "optimizer" in release.obj:
        notes.append("ignored the 'optimizer' entry (Adam state: not a model weight)")
    report = ConversionReport("interwild", path, None, cfg["body_depth"], release.load, release.extract, mapping,
                              meta, notes=notes)
    write_conversion(model, release.out_dir, meta, report)
    return report
