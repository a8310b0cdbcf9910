"""handobjectconsist releases (hassony2/handobjectconsist ``checkpoint_<epoch>.pth``) -> handjax model-only
checkpoints of :class:`handjax.models.meshregnet.MeshRegNet`.

libyana's ``save_checkpoint`` writes ``torch.save({'epoch', 'network', 'state_dict', 'optimizer', 'scheduler'})``:
``state_dict`` is the MeshRegNet's (no ``module.`` prefix; stage-1 and stage-2 releases share one key set),
``optimizer`` Adam's state and ``scheduler`` a PICKLED ``StepLR`` object, which the restricted unpickler turns
into an inert placeholder (never run). Every tensor of the state dict is used or ignored with a reason:

=============================================  ======================================  =========
handobjectconsist key                          handjax path (``MeshRegNet``)           transform
=============================================  ======================================  =========
``base_net.*`` (torchvision names)             ``backbone.*``                          torchvision
``base_net.fc.*``                              (ignored: unused, forward pools layer4)
``mano_branch.base_layer.{0,2}.*``             ``heads.base_layer.{0,1}.*``            linear
``mano_branch.pose_reg.*``                     ``heads.pose_reg.*``                    linear
``mano_branch.shape_reg.0.*``                  ``heads.shape_reg.*``                   linear
``scaletrans_branch.decoder.0`` / final_layer  ``heads.scaletrans_decoder`` / _final  linear
``scaletrans_branch_obj.*``                    ``heads.scaletrans_obj_*``              linear
``adaptor.adaptor.weight`` (21, 778)           ``adaptor`` (frozen, FPHAB models)      as is
``adaptor.J_regressor``                        (ignored: the same values, checked)
``fhb_shape``                                  (ignored: a buffer never used in forward)
``mano_branch.mano_layer_{right,left}.th_*``   (ignored: MANO data, from the user's file)
=============================================  ======================================  =========

The model's ramp counter (``consist_batches``) is training state, not a weight: it starts at 0. Sizes (backbone
depth, MANO hidden widths, PCA components, shape branch, adaptor) are read from the keys and saved in the
metadata; evaluate with ``configs/photometric.py:recipe=fphab`` and ``--config.eval.checkpoint=<out>``.
"""
from __future__ import annotations

import os
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from handjax.convert.mapping import ConversionError, Ignore, Rule, apply_rules, flatten_tree, path_str
from handjax.convert.rules_torchvision import torchvision_resnet_rules
from handjax.convert.common import ConversionReport, open_release, write_conversion
from handjax.convert.tempclr import detect_resnet_depth
from handjax.models.meshregnet import MeshRegNet

CONVERTER = "handjax.convert.handobjectconsist.convert_handobjectconsist"
COUNTER = "consist_batches"


def model_config(state_dict: Mapping[str, np.ndarray], source_name: str = "state dict") -> dict:
    """Sizes read from the keys (a missing key is an error naming it)."""
    def shape(key):
        if key not in state_dict:
            raise ValueError(f"{source_name}: no key {key!r}: not a handobjectconsist MeshRegNet state dict")
        return tuple(np.shape(state_dict[key]))

    hidden, i = [], 0
    while f"mano_branch.base_layer.{i}.weight" in state_dict:
        hidden.append(shape(f"mano_branch.base_layer.{i}.weight")[0])
        i += 2
    if not hidden:
        shape("mano_branch.base_layer.0.weight")
    return dict(depth=detect_resnet_depth(state_dict, "base_net.", source_name),
                ncomps=shape("mano_branch.pose_reg.weight")[0] - 3, mano_neurons=tuple(hidden),
                use_shape="mano_branch.shape_reg.0.weight" in state_dict,
                fhb_adaptor="adaptor.adaptor.weight" in state_dict)


def build_model(cfg: dict, abstract: bool = False, seed: int = 0) -> MeshRegNet:
    adaptor = jnp.zeros((21, 778), jnp.float32) if cfg["fhb_adaptor"] else None
    make = lambda: MeshRegNet(f"resnet{cfg['depth']}", rngs=nnx.Rngs(seed), ncomps=cfg["ncomps"],  # noqa: E731
                              mano_neurons=tuple(cfg["mano_neurons"]), use_shape=cfg["use_shape"], adaptor=adaptor)
    return nnx.eval_shape(make) if abstract else make()


def _linear(src: str, dst: str) -> list:
    return [Rule(rf"{src}\.weight", f"{dst}.kernel", "linear"), Rule(rf"{src}\.bias", f"{dst}.bias")]


def meshregnet_rules(num_hidden: int) -> list:
    """The strict mapping (module docstring)."""
    rules = [
        Ignore(r"fhb_shape", "FPHAB mean-shape buffer: registered but never used in forward"),
        Ignore(r"adaptor\.J_regressor", "the adaptor's regressor buffer: the same values as adaptor.adaptor.weight"),
        *torchvision_resnet_rules("base_net.", "backbone"),
        Rule(r"adaptor\.adaptor\.weight", "adaptor"),
        *_linear(r"mano_branch\.pose_reg", "heads.pose_reg"),
        *_linear(r"mano_branch\.shape_reg\.0", "heads.shape_reg"),
        *_linear(r"scaletrans_branch\.decoder\.0", "heads.scaletrans_decoder"),
        *_linear(r"scaletrans_branch\.final_layer", "heads.scaletrans_final"),
        *_linear(r"scaletrans_branch_obj\.decoder\.0", "heads.scaletrans_obj_decoder"),
        *_linear(r"scaletrans_branch_obj\.final_layer", "heads.scaletrans_obj_final"),
    ]
    for k in range(num_hidden):
        rules += _linear(rf"mano_branch\.base_layer\.{2 * k}", f"heads.base_layer.{k}")
    return rules


def meshregnet_from_state_dict(state_dict: Mapping[str, np.ndarray], source_name: str = "state dict"):
    """``(model, cfg, MappingReport)``: a MeshRegNet holding every weight of the state dict."""
    cfg = model_config(state_dict, source_name)
    if cfg["fhb_adaptor"] and "adaptor.J_regressor" in state_dict and not np.array_equal(
            np.asarray(state_dict["adaptor.J_regressor"]), np.asarray(state_dict["adaptor.adaptor.weight"])):
        raise ValueError(f"{source_name}: adaptor.J_regressor and adaptor.adaptor.weight differ (upstream ties them)")
    graphdef, state = nnx.split(build_model(cfg, abstract=True))
    tree, report = apply_rules(state_dict, meshregnet_rules(len(cfg["mano_neurons"])), nnx.to_pure_dict(state),
                               keep_targets=(COUNTER,), allow_cast=True, source_name=source_name)
    leaves = flatten_tree(tree)
    unfilled = [path_str(p) for p, leaf in leaves.items() if isinstance(leaf, jax.ShapeDtypeStruct)
                and path_str(p) != COUNTER]
    if unfilled:
        raise ConversionError(f"{source_name}: model variables left without a value: {unfilled}")
    tree[COUNTER] = np.zeros((), np.int32)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, tree))
    return nnx.merge(graphdef, state), cfg, report


def convert_handobjectconsist(checkpoint: str | os.PathLike, out_dir: str | os.PathLike) -> ConversionReport:
    """Convert a libyana ``checkpoint_<epoch>.pth`` into a model-only checkpoint (module docstring)."""
    release = open_release(checkpoint, out_dir, expected="checkpoint_<epoch>.pth", nested_keys=("state_dict",))
    path = release.path
    model, cfg, mapping = meshregnet_from_state_dict(release.state_dict, source_name=path)
    meta = dict(cfg, mano_neurons=list(cfg["mano_neurons"]), system="handobjectconsist", source=path,
                epoch=release.int_entry("epoch"), converter=CONVERTER)
    notes = [f"MeshRegNet: ResNet-{cfg['depth']}, MANO branch {list(cfg['mano_neurons'])}, {cfg['ncomps']} PCA "
             f"components, shape branch {'yes' if cfg['use_shape'] else 'no'}, FPHAB adaptor "
             f"{'yes (frozen)' if cfg['fhb_adaptor'] else 'no'}"]
    for key in ("optimizer", "scheduler"):
        if key in release.obj:
            notes.append(f"ignored the {key!r} entry (training state, not a model weight"
                         + ("; a pickled StepLR object, loaded as an inert placeholder)" if key == "scheduler"
                            else ")"))
    report = ConversionReport("handobjectconsist", path, None, cfg["depth"], release.load, release.extract, mapping,
                              meta, notes=notes)
    write_conversion(model, release.out_dir, meta, report)
    return report
