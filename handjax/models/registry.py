"""Model parts chosen by name from config (big_vision style).

A system's model composes registered parts: ``build("backbone", cfg.model.backbone, rngs=...,
...)``. A new backbone or head is a new registration, not an edit to a trainer. Kinds:

* ``backbone``: images (B, H, W, 3) -> pooled features (B, F); the module exposes
  ``num_features`` (F) and may offer ``features(x)`` (spatial maps).
* ``head``: system heads (e.g. TempCLR's iterative MANO regressor, the contrastive
  projection head).

Factories take keyword arguments only (``rngs`` always; others per part).
"""
from __future__ import annotations

import importlib
from typing import Callable, Dict

_PARTS: Dict[str, Dict[str, Callable]] = {"backbone": {}, "head": {}}
# Modules whose import registers parts; loaded before any lookup so that every name is known.
PART_MODULES = ("handjax.models.resnet", "handjax.models.tempclr",
                "handjax.models.hrnet", "handjax.models.meshregnet", "handjax.models.interwild",
                "handjax.models.digit")


def _load_parts() -> None:
    for module in PART_MODULES:
        importlib.import_module(module)


def register(kind: str, name: str):
    """Decorator: ``@register("backbone", "resnet50")`` on a factory ``(**kwargs) -> nnx.Module``."""
    if kind not in _PARTS:
        raise ValueError(f"unknown model part kind {kind!r}; known: {sorted(_PARTS)}")

    def wrap(factory: Callable) -> Callable:
        if name in _PARTS[kind]:
            raise ValueError(f"{kind} {name!r} is registered twice")
        _PARTS[kind][name] = factory
        return factory

    return wrap


def names(kind: str) -> tuple:
    _load_parts()
    return tuple(sorted(_PARTS[kind]))


def build(kind: str, name: str, *, config_key: str = "", **kwargs):
    """The registered ``kind`` called ``name``, built with ``kwargs``.

    An unknown name is a ValueError naming ``config_key`` (e.g. ``model.backbone``) and the known
    names.
    """
    _load_parts()
    parts = _PARTS.get(kind)
    if parts is None:
        raise ValueError(f"unknown model part kind {kind!r}; known: {sorted(_PARTS)}")
    if name not in parts:
        where = f"config key {config_key}: " if config_key else ""
        raise ValueError(f"{where}unknown {kind} {name!r}; known: {', '.join(names(kind))}")
    return parts[name](**kwargs)
