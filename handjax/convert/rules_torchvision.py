"""Rule set: torchvision ResNet state_dict -> ``handjax.models.resnet`` nnx ResNet.

Source (torchvision naming, optionally under ``prefix``, e.g. ``'backbone.'``)::

    conv1.weight                         [64, 3, 7, 7]
    bn1.{weight,bias,running_mean,running_var,num_batches_tracked}
    layer{L}.{i}.conv{k}.weight          k = 1, 2 (BasicBlock) or 1, 2, 3 (Bottleneck)
    layer{L}.{i}.bn{k}.*
    layer{L}.{i}.downsample.0.weight     1x1 conv
    layer{L}.{i}.downsample.1.*          BatchNorm
    fc.{weight,bias}                     classifier

Target (``nnx.to_pure_dict`` of the nnx ResNet, optionally under
``target_prefix``, e.g. ``'backbone'``): ``conv1.kernel`` (HWIO),
``bn1.{scale,bias,mean,var}``, ``layer{L}.{i}.conv{k}.kernel``,
``layer{L}.{i}.bn{k}.*``, ``layer{L}.{i}.downsample.{0: kernel, 1: bn}``; list
items (``nnx.List``) are int keys. ``fc.*`` and ``num_batches_tracked`` are
ignored with reasons.
"""
from __future__ import annotations

import re

from handjax.convert.mapping import Ignore, Rule

_BN = (("weight", "scale", "bn_scale"), ("bias", "bias", "bn_bias"),
       ("running_mean", "mean", "bn_mean"), ("running_var", "var", "bn_var"))


def _bn_rules(src: str, dst: str) -> list[Rule]:
    """BatchNorm rules for a source regex stem ``src`` and target template stem ``dst``."""
    return [Rule(rf"{src}\.{s}", f"{dst}.{t}", tr) for s, t, tr in _BN]


def torchvision_resnet_rules(prefix: str = "", target_prefix: str = "") -> list[Rule | Ignore]:
    """Rules mapping torchvision ResNet keys (under ``prefix``) to the nnx ResNet tree.

    prefix: literal string in front of every source key (``'backbone.'``).
    target_prefix: '.'-separated path of the ResNet inside the target tree
    (``'backbone'``), or '' when the tree is the ResNet itself.
    """
    p = re.escape(prefix)
    t = f"{target_prefix}." if target_prefix else ""
    block = rf"{p}layer([1-4])\.(\d+)"
    block_t = rf"{t}layer\1.\2"
    rules: list[Rule | Ignore] = [
        Ignore(rf"{p}(?:.*\.)?num_batches_tracked", "BatchNorm step counter: not used at inference"),
        Ignore(rf"{p}fc\.(?:weight|bias)", "torchvision classifier: the handjax ResNet backbone has no fc head"),
        Rule(rf"{p}conv1\.weight", f"{t}conv1.kernel", "conv"),
        *_bn_rules(rf"{p}bn1", f"{t}bn1"),
        Rule(rf"{block}\.conv([1-3])\.weight", rf"{block_t}.conv\3.kernel", "conv"),
        *_bn_rules(rf"{block}\.bn([1-3])", rf"{block_t}.bn\3"),
        Rule(rf"{block}\.downsample\.0\.weight", rf"{block_t}.downsample.0.kernel", "conv"),
        *_bn_rules(rf"{block}\.downsample\.1", rf"{block_t}.downsample.1"),
    ]
    return rules
