"""IdHandMesh checkpoints (deyingk/PersonalizedHandMeshEstimation) -> handjax model-only checkpoints.

The release's ``utils/writer.py::save_checkpoint`` writes ``torch.save({'epoch', 'model_state_dict',
'optimizer_state_dict', 'scheduler_state_dict'})`` (``checkpoint_last.pt``), the model saved through
``model.module`` (no ``module.`` prefix; one is stripped if present). Three MANO-based models, told apart by
their keys (idhandmesh.md 1.8):

* baseline (``MANO_Based_Model_Iterative_Pose_Without_GT_Shape``): ``shape_extractor.*``, additive 6D updates;
* confidence (``..._With_Conf``): also ``conf_branch.*``;
* identity-aware (``MANO_Based_Model_Iterative_Pose``): neither; left-multiplicative 6D updates.

State-dict key -> ``handjax.models.idhandmesh.IdHandMeshModel`` path (Linear (out, in) -> kernel (in, out)):

===============================================  ==========================================  ============
IdHandMesh key                                   handjax path                                transform
===============================================  ==========================================  ============
``feature_extractor.*`` (torchvision names)      ``backbone.*``                              torchvision
``feature_extractor.fc.{weight,bias}``           ``fc.{kernel,bias}`` (the 1000-d feature)   linear
``pose_6d_extractor.{s}.{3k}.{weight,bias}``     ``pose.stages[s].layers[k].{kernel,bias}``  linear
``shape_extractor.{3k}.*``                       ``shape.layers[k].*``                       linear
``conf_branch.{i}.*`` (Linear ``i``: the k-th)   ``conf.layers[k].*``                        linear
===============================================  ==========================================  ============

Ignored with reasons: BatchNorm step counters, and every MANO-derived buffer (``mano_layer.th_*``,
``th_selected_comps``, ``th_hands_mean``, ``j_regressor``): MANO comes from the user's own file at run time.
Hidden sizes, the feature width, the stage count and the backbone depth are read from the shapes. Not
representable (an error): a confidence branch with a Sigmoid or Dropout in front (``conf_use_sigmoid`` /
``conf_hidden_layers_drop_out``; neither is used by the release's scripts) changes no keys but the Dropout
shifts the Linear indices, which are accepted in any order.
"""
from __future__ import annotations

import os
import re
from typing import Mapping, Optional

import numpy as np
from flax import nnx

from handjax.convert.mapping import Ignore, Rule
from handjax.convert.rules_torchvision import torchvision_resnet_rules
from handjax.convert.common import ConversionReport, fill_from_state_dict, open_release, write_conversion
from handjax.convert.tempclr import detect_resnet_depth
from handjax.models.idhandmesh import IdHandMeshModel

KINDS = ("baseline", "confidence", "identity")
_MANO_DERIVED = "MANO-derived buffer (licensed data or computed from it): MANO comes from the user's file at run time"


def detect_kind(state_dict: Mapping[str, np.ndarray]) -> str:
    """"confidence" (conf_branch), "baseline" (shape_extractor) or "identity" (neither)."""
    if any(k.startswith("conf_branch.") for k in state_dict):
        return "confidence"
    return "baseline" if any(k.startswith("shape_extractor.") for k in state_dict) else "identity"


def _linear_chain(state_dict, prefix: str, source_name: str) -> list:
    """Sequential indices and (out, in) shapes of the Linear weights ``<prefix><i>.weight``, in order."""
    pat = re.compile(re.escape(prefix) + r"(\d+)\.weight")
    found = sorted((int(m.group(1)), np.shape(v)) for k, v in state_dict.items() if (m := pat.fullmatch(k)))
    if not found:
        raise ValueError(f"{source_name}: no '{prefix}<i>.weight' keys")
    for (_, a), (_, b) in zip(found, found[1:]):
        if len(a) != 2 or len(b) != 2 or b[1] != a[0]:
            raise ValueError(f"{source_name}: '{prefix}*' Linear shapes {[s for _, s in found]} do not chain")
    return found


def model_config(state_dict: Mapping[str, np.ndarray], source_name: str = "state dict") -> dict:
    """The IdHandMeshModel keyword arguments a state dict describes (kind, depth and sizes from the shapes)."""
    kind = detect_kind(state_dict)
    depth = detect_resnet_depth(state_dict, "feature_extractor.", source_name)
    if "feature_extractor.fc.weight" not in state_dict:
        raise ValueError(f"{source_name}: no feature_extractor.fc.weight: IdHandMesh keeps the ImageNet fc as its "
                         f"feature layer")
    feature_dim = int(np.shape(state_dict["feature_extractor.fc.weight"])[0])
    stages = sorted({int(m.group(1)) for k in state_dict if (m := re.fullmatch(r"pose_6d_extractor\.(\d+)\..+", k))})
    if stages != list(range(len(stages))) or not stages:
        raise ValueError(f"{source_name}: pose_6d_extractor stages {stages}: expected 0..n-1")
    chains = [_linear_chain(state_dict, f"pose_6d_extractor.{s}.", source_name) for s in stages]
    pose_hidden = tuple(int(shape[0]) for _, shape in chains[0][:-1])
    if any(tuple(int(sh[0]) for _, sh in c[:-1]) != pose_hidden for c in chains):
        raise ValueError(f"{source_name}: the pose stages have different hidden sizes")
    if chains[0][0][1][1] != feature_dim + 96 or chains[0][-1][1][0] != 96:
        raise ValueError(f"{source_name}: pose_6d_extractor input/output {chains[0][0][1][1]}/{chains[0][-1][1][0]}, "
                         f"expected {feature_dim} + 96 / 96")
    cfg = dict(kind=kind, depth=depth, feature_dim=feature_dim, iterations=len(stages), pose_hidden=pose_hidden,
               pose_mode="multiply" if kind == "identity" else "add", shape_head=kind != "identity",
               shape_hidden=(), confidence=kind == "confidence", conf_hidden=())
    if cfg["shape_head"]:
        shape = _linear_chain(state_dict, "shape_extractor.", source_name)
        cfg["shape_hidden"] = tuple(int(sh[0]) for _, sh in shape[:-1])
    if cfg["confidence"]:
        conf = _linear_chain(state_dict, "conf_branch.", source_name)
        cfg["conf_hidden"] = tuple(int(sh[0]) for _, sh in conf[:-1])
    return cfg


def build_model(cfg: dict, abstract: bool = False, seed: int = 0) -> IdHandMeshModel:
    make = lambda: IdHandMeshModel(backbone=f"resnet{cfg['depth']}", rngs=nnx.Rngs(seed),
                                   feature_dim=cfg["feature_dim"], pose_mode=cfg["pose_mode"],
                                   iterations=cfg["iterations"], pose_hidden=tuple(cfg["pose_hidden"]),
                                   shape_head=cfg["shape_head"], shape_hidden=tuple(cfg["shape_hidden"]),
                                   confidence=cfg["confidence"], conf_hidden=tuple(cfg["conf_hidden"]),
                                   heatmaps=False)
    return nnx.eval_shape(make) if abstract else make()


def _ordinal_rule(prefix_re: str, target: str, indices: list) -> list:
    """Rules for a Linear chain whose Sequential indices are ``indices``: index i -> layers[ordinal]."""
    order = {i: n for n, i in enumerate(indices)}

    def to_target(match):
        return tuple(target.split(".")) + (order[int(match.group("i"))],
                                            "kernel" if match.group("w") == "weight" else "bias")

    return [Rule(rf"{prefix_re}(?P<i>{'|'.join(map(str, indices))})\.(?P<w>weight)", to_target, "linear"),
            Rule(rf"{prefix_re}(?P<i>{'|'.join(map(str, indices))})\.(?P<w>bias)", to_target, "identity")]


def idhandmesh_rules(state_dict: Mapping[str, np.ndarray], cfg: dict) -> list:
    """The strict mapping of one IdHandMesh state dict (module docstring)."""
    rules = [
        Ignore(r"(?:mano_layer\..+|th_selected_comps|th_hands_mean|j_regressor)", _MANO_DERIVED),
        Rule(r"feature_extractor\.fc\.weight", "fc.kernel", "linear"),
        Rule(r"feature_extractor\.fc\.bias", "fc.bias", "identity"),
        *torchvision_resnet_rules("feature_extractor.", "backbone"),
    ]
    for s in range(cfg["iterations"]):
        idx = [i for i, _ in _linear_chain(state_dict, f"pose_6d_extractor.{s}.", "state dict")]
        rules += _ordinal_rule(rf"pose_6d_extractor\.{s}\.", f"pose.stages.{s}.layers", idx)
    if cfg["shape_head"]:
        rules += _ordinal_rule(r"shape_extractor\.", "shape.layers",
                               [i for i, _ in _linear_chain(state_dict, "shape_extractor.", "state dict")])
    if cfg["confidence"]:
        rules += _ordinal_rule(r"conf_branch\.", "conf.layers",
                               [i for i, _ in _linear_chain(state_dict, "conf_branch.", "state dict")])
    return rules


def idhandmesh_model_from_state_dict(state_dict: Mapping[str, np.ndarray], source_name: str = "state dict"):
    """``(model, cfg, MappingReport)``: an IdHandMeshModel holding every tensor of the state dict."""
    cfg = model_config(state_dict, source_name)
    model, report = fill_from_state_dict(build_model(cfg, abstract=True), state_dict, idhandmesh_rules(state_dict, cfg),
                                         source_name=source_name)
    return model, cfg, report


def convert_idhandmesh(checkpoint: str | os.PathLike, out_dir: str | os.PathLike,
                       kind: Optional[str] = None) -> ConversionReport:
    """Convert ``checkpoint_last.pt`` of one of the three MANO-based models into a model-only checkpoint.

    kind: "baseline" | "confidence" | "identity" to assert which model it must be (detected from the keys
    either way). The metadata records the model's sizes (``handjax.convert.idhandmesh.build_model(meta)``
    rebuilds it); the model has no heatmap head (upstream's 2D network is a separate model).
    """
    release = open_release(checkpoint, out_dir, expected="checkpoint_last.pt", nested_keys=("model_state_dict",))
    path = release.path
    model, cfg, mapping = idhandmesh_model_from_state_dict(release.state_dict, source_name=path)
    if kind is not None and kind != cfg["kind"]:
        raise ValueError(f"{path}: --kind {kind} was given, but the keys describe the {cfg['kind']} model")
    meta = dict(cfg, system="idhandmesh", source=path, epoch=release.int_entry("epoch"),
                pose_hidden=list(cfg["pose_hidden"]), shape_hidden=list(cfg["shape_hidden"]),
                conf_hidden=list(cfg["conf_hidden"]), converter="handjax.convert.idhandmesh.convert_idhandmesh")
    report = ConversionReport("idhandmesh", path, None, cfg["depth"], release.load, release.extract, mapping, meta,
                              notes=[f"{cfg['kind']} model: feature {cfg['feature_dim']}, {cfg['iterations']} pose "
                                     f"stages {list(cfg['pose_hidden'])}, {cfg['pose_mode']} updates"])
    write_conversion(model, release.out_dir, meta, report)
    return report
