"""DIGIT's released checkpoint (``db7cba8c1.pt``) -> a handjax :class:`~handjax.models.digit.DigitModel`.

Accepted layouts (digit.md 1.7 / 1.8): a plain state_dict with keys ``pose_reg.*``, optionally
all prefixed ``model.`` (upstream's ``Model.load_pretrained`` strips it), or a PyTorch Lightning
checkpoint (``{'state_dict': {'model.pose_reg.*'}, 'epoch', ...}``). fp16 tensors are cast to
float32 (listed). Every one of the 1903 entries of the released architecture is accounted for:
976 parameters and 309 x (running_mean, running_var) are used, the 309 ``num_batches_tracked``
counters are ignored (the BatchNorm momentum is fixed, so the counter has no role). Missing,
unexpected or misshapen keys stop the conversion with one error listing them.

Sizes are read from the keys (backbone width, layer1 planes / blocks, modules and blocks of
stages 2-4, every head width), so narrowed re-trainings convert too; the released model is
HRNet-W32 with the upstream head (``configs/digit.py:recipe=paper``). Key -> NNX path:

=====================================================  =========================================
torch (after ``pose_reg.``)                            handjax
=====================================================  =========================================
``backbone.*``                                         ``backbone.*`` (``hrnet.torch_key_to_nnx_path``)
``hand_segm.segm_head.upsampler.up1.conv.double_conv.  ``segm_up.{conv1,bn1,conv2,bn2}``
{0,1,3,4}``
``hand_segm.segm_head.segm_net.double_conv.{0,1,3}``   ``segm_conv1``, ``segm_bn``, ``segm_conv2``
``conv_segm_feat.{0,2}``                               ``segm_feat1``, ``segm_feat2``
``merge_layer.inc.double_conv.N``,                     ``merge.{inc,down1..3,up1..3}.{conv1,bn1,
``merge_layer.down{k}.maxpool_conv.1.double_conv.N``,  conv2,bn2}`` (N = 0, 1, 3, 4)
``merge_layer.up{k}.conv.double_conv.N``
``merge_layer.outc.conv``                              ``merge.outc``
``conv_hm``, ``conv_depth``                            ``conv_hm``, ``conv_depth``
``conv_head.{0,2,5,7,10,12}``                          ``head.{0..5}``
``root_fc.{0,2}``, ``hand_fc.{0,2}``                   ``root_fc{1,2}``, ``hand_fc{1,2}``
=====================================================  =========================================

A conv with bias: ``weight`` (OIHW) -> ``<m>.conv.kernel`` (HWIO), ``bias`` -> ``<m>.bias``;
BatchNorm: weight / bias / running_mean / running_var -> scale / bias / mean / var; Linear:
weight (out, in) -> kernel (in, out).
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping

import numpy as np
from flax import nnx

from handjax.convert.common import ConversionReport, Release, fill_from_state_dict, open_release, write_conversion
from handjax.convert.mapping import Ignore, Rule
from handjax.models.digit import DigitModel, DigitSpec
from handjax.models.hrnet import torch_key_to_nnx_path

PREFIX = "pose_reg."
RELEASED_ENTRIES = 1903
_DC = {"0": "conv1", "1": "bn1", "3": "conv2", "4": "bn2"}
_BN = {"weight": ("scale", "bn_scale"), "bias": ("bias", "bn_bias"), "running_mean": ("mean", "bn_mean"),
       "running_var": ("var", "bn_var")}
_HEAD = {"0": 0, "2": 1, "5": 2, "7": 3, "10": 4, "12": 5}


def _conv_rules(src: str, dst: str) -> list:
    """A conv with bias at torch path ``src`` (regex) -> ConvBias at ``dst`` (template)."""
    return [Rule(src + r"\.weight", dst + ".conv.kernel", "conv"), Rule(src + r"\.bias", dst + ".bias")]


def _bn_rules(src: str, dst: str) -> list:
    return [Rule(src + r"\." + leaf, dst + "." + name, tr) for leaf, (name, tr) in _BN.items()]


def _double_conv_rules(src: str, dst: str) -> list:
    rules = []
    for idx, name in _DC.items():
        make = _conv_rules if name.startswith("conv") else _bn_rules
        rules += make(src + r"\.double_conv\." + idx, dst + "." + name)
    return rules


def _backbone_target(match: re.Match) -> tuple:
    found = torch_key_to_nnx_path(match.group(1))
    return ("backbone",) + tuple(str(p) for p in found[0])


def digit_rules() -> list:
    """The mapping of a ``pose_reg.``-stripped DIGIT state dict onto ``DigitModel`` (module docstring)."""
    rules: list = [Ignore(r".*\.num_batches_tracked",
                          "BatchNorm update counter: handjax's momentum is fixed (0.9 = torch's 0.1), so it has "
                          "no use")]
    # backbone: conv kernels and BatchNorm tensors by hrnet.torch_key_to_nnx_path
    rules += [Rule(r"backbone\.(.*\.(?:conv[1-3]|0)\.weight|conv[12]\.weight)", _backbone_target, "conv"),
              Rule(r"backbone\.(.*\.(?:bn[1-3]|1)\.weight|bn[12]\.weight)", _backbone_target, "bn_scale"),
              Rule(r"backbone\.(.*\.(?:bn[1-3]|1)\.bias|bn[12]\.bias)", _backbone_target, "bn_bias"),
              Rule(r"backbone\.(.*\.(?:bn[1-3]|1)\.running_mean|bn[12]\.running_mean)", _backbone_target, "bn_mean"),
              Rule(r"backbone\.(.*\.(?:bn[1-3]|1)\.running_var|bn[12]\.running_var)", _backbone_target, "bn_var")]
    rules += _double_conv_rules(r"hand_segm\.segm_head\.upsampler\.up1\.conv", "segm_up")
    rules += _conv_rules(r"hand_segm\.segm_head\.segm_net\.double_conv\.0", "segm_conv1")
    rules += _bn_rules(r"hand_segm\.segm_head\.segm_net\.double_conv\.1", "segm_bn")
    rules += _conv_rules(r"hand_segm\.segm_head\.segm_net\.double_conv\.3", "segm_conv2")
    rules += _conv_rules(r"conv_segm_feat\.0", "segm_feat1") + _conv_rules(r"conv_segm_feat\.2", "segm_feat2")
    rules += _double_conv_rules(r"merge_layer\.inc", "merge.inc")
    rules += _double_conv_rules(r"merge_layer\.down([1-3])\.maxpool_conv\.1", r"merge.down\1")
    rules += _double_conv_rules(r"merge_layer\.up([1-3])\.conv", r"merge.up\1")
    rules += _conv_rules(r"merge_layer\.outc\.conv", "merge.outc")
    rules += _conv_rules(r"conv_hm", "conv_hm") + _conv_rules(r"conv_depth", "conv_depth")
    for src, dst in _HEAD.items():
        rules += _conv_rules(r"conv_head\." + src, f"head.{dst}")
    for fc in ("root_fc", "hand_fc"):
        for src, dst in (("0", "1"), ("2", "2")):
            rules += [Rule(rf"{fc}\.{src}\.weight", f"{fc}{dst}.kernel", "linear"),
                      Rule(rf"{fc}\.{src}\.bias", f"{fc}{dst}.bias")]
    return rules


# ----------------------------------------------------------------------------- sizes from the keys
def _shape(sd: Mapping[str, np.ndarray], key: str, source: str) -> tuple:
    if key not in sd:
        raise ValueError(f"{source}: missing key {PREFIX}{key} (is this a DIGIT checkpoint?)")
    return tuple(sd[key].shape)


def _count(sd, pattern: str) -> int:
    found = {int(m.group(1)) for k in sd for m in [re.fullmatch(pattern, k)] if m}
    return max(found) + 1 if found else 0


def detect_sizes(sd: Mapping[str, np.ndarray], source: str = "state dict") -> dict:
    """{"backbone_kw": HRNetSpec fields, "spec": DigitSpec fields} read from the key shapes."""
    width = _shape(sd, "backbone.transition1.0.0.weight", source)[0]
    planes = _shape(sd, "backbone.layer1.0.conv1.weight", source)[0]
    blocks = _count(sd, r"backbone\.layer1\.(\d+)\.conv1\.weight")
    stages = []
    for s in (2, 3, 4):
        modules = _count(sd, rf"backbone\.stage{s}\.(\d+)\.branches\.0\.0\.conv1\.weight")
        nb = _count(sd, rf"backbone\.stage{s}\.0\.branches\.0\.(\d+)\.conv1\.weight")
        if not modules or not nb:
            raise ValueError(f"{source}: no {PREFIX}backbone.stage{s}.* keys (is this a pose-HRNet backbone?)")
        stages.append((modules, nb))
    up = "hand_segm.segm_head.upsampler.up1.conv.double_conv."
    head = tuple(_shape(sd, f"conv_head.{i}.weight", source)[0] for i in _HEAD)
    spec = dict(seg_mid=_shape(sd, up + "0.weight", source)[0], seg_hidden=_shape(sd, up + "3.weight", source)[0],
                seg_feat=(_shape(sd, "conv_segm_feat.0.weight", source)[0],
                          _shape(sd, "conv_segm_feat.2.weight", source)[0]),
                unet_base=_shape(sd, "merge_layer.inc.double_conv.0.weight", source)[0], head=head,
                fc=_shape(sd, "root_fc.0.weight", source)[0], root_bins=_shape(sd, "root_fc.2.weight", source)[0])
    return {"backbone": "hrnet_w32",
            "backbone_kw": dict(width=int(width), layer1_planes=int(planes), layer1_blocks=int(blocks),
                                stages=tuple(stages)),
            "spec": {k: (tuple(int(x) for x in v) if isinstance(v, tuple) else int(v)) for k, v in spec.items()}}


def _backbone_kw_overrides(kw: dict) -> dict:
    """Only the fields that differ from HRNet-W32 (so the released model's config is ``backbone_kw={}``)."""
    from handjax.models.hrnet import HRNET_SPECS

    w32 = HRNET_SPECS["hrnet_w32"]
    return {k: v for k, v in kw.items() if getattr(w32, k) != v}


def build_digit_model(sizes: dict, abstract: bool = True):
    make = lambda: DigitModel(rngs=nnx.Rngs(0), backbone=sizes["backbone"], backbone_kw=sizes["backbone_kw"],
                              spec=DigitSpec(**sizes["spec"]), input_norm="unit")
    return nnx.eval_shape(make) if abstract else make()


def digit_model_from_state_dict(sd: Mapping[str, np.ndarray], source: str = "state dict"):
    """(model, sizes, MappingReport) of a ``pose_reg.``-stripped state dict (strict)."""
    sizes = detect_sizes(sd, source)
    model, report = fill_from_state_dict(build_digit_model(sizes), sd, digit_rules(), source_name=source)
    return model, sizes, report


def _strip_pose_reg(release: Release) -> dict:
    """The release's state dict without the ``pose_reg.`` prefix every key must have (recorded in the report)."""
    sd, path = release.state_dict, release.path
    bad = [k for k in sd if not k.startswith(PREFIX)]
    if bad:
        raise ValueError(f"{path}: expected every key to start with {PREFIX!r} (DIGIT's Model.pose_reg, after an "
                         f"optional 'model.'); {len(bad)} do not, e.g. {bad[:5]}")
    release.extract.stripped_prefixes = tuple(release.extract.stripped_prefixes) + (PREFIX,)
    return {k[len(PREFIX):]: v for k, v in sd.items()}


class DigitConversionReport(ConversionReport):
    """The shared conversion report, with DIGIT's model line."""

    def model_line(self) -> str:
        m = self.meta
        return (f"model: DIGIT, backbone {m['backbone']} (overrides {m['backbone_kw'] or 'none'}), head "
                f"{m['spec']}; {m['entries']} entries (released model: {m['released_entries']})")

    def summary(self, per_tensor: bool = True) -> str:
        lines = super().summary(per_tensor).split("\n")
        if self.extract.cast_to_float32:
            lines.insert(2, f"  cast to float32 (fp16 in the file): {len(self.extract.cast_to_float32)} tensors")
        return "\n".join(lines)


def convert_digit(checkpoint: str | os.PathLike, out_dir: str | os.PathLike) -> ConversionReport:
    """Convert DIGIT's ``db7cba8c1.pt`` (or a Lightning ``.ckpt`` of it) into a handjax model-only
    checkpoint at ``out_dir`` (meta: ``system='digit'``, the detected sizes, ``converter``) with
    ``conversion_report.txt``. Returns the :class:`ConversionReport`."""
    release = open_release(checkpoint, out_dir, expected="db7cba8c1.pt or a Lightning .ckpt of it",
                           nested_keys=("state_dict",), prefixes_to_strip=("model.",),
                           contents="a state dict or a Lightning checkpoint dict")
    path = release.path
    sd = _strip_pose_reg(release)
    model, sizes, mapping = digit_model_from_state_dict(sd, source=path)
    meta = {"system": "digit", "source": path, "backbone": sizes["backbone"],
            "backbone_kw": {k: (list(map(list, v)) if k == "stages" else v)
                            for k, v in _backbone_kw_overrides(sizes["backbone_kw"]).items()},
            "spec": {k: (list(v) if isinstance(v, tuple) else v) for k, v in sizes["spec"].items()},
            "entries": len(sd), "released_entries": RELEASED_ENTRIES,
            "epoch": release.int_entry("epoch"), "input_norm": "unit",
            "converter": "handjax.convert.digit.convert_digit"}
    notes = []
    if len(sd) != RELEASED_ENTRIES:
        notes.append(f"{len(sd)} state-dict entries (the released HRNet-W32 DIGIT has {RELEASED_ENTRIES}): sizes "
                     f"read from the keys: backbone_kw={meta['backbone_kw']}, spec={meta['spec']}")
    report = DigitConversionReport("digit", path, None, 32, release.load, release.extract, mapping, meta,
                                   notes=notes)
    write_conversion(model, release.out_dir, meta, report)
    return report


__all__ = ["convert_digit", "detect_sizes", "digit_model_from_state_dict", "digit_rules"]
