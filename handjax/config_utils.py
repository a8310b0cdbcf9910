"""Helpers shared by config files."""
from __future__ import annotations

from typing import Mapping, Sequence

import ml_collections


def parse_arg(arg: str | None, choices: Mapping[str, Sequence[str]] | None = None,
              **defaults) -> ml_collections.ConfigDict:
    """big_vision-style 'key=value,key2=value2' config argument, typed by the defaults.

    Unknown keys, values that do not parse as the default's type and values outside ``choices``
    (key -> allowed values, e.g. ``{"size": ("default", "tiny")}``) are errors naming the key.
    """
    out = _parse(arg, defaults)
    for key, allowed in (choices or {}).items():
        if out[key] not in allowed:
            raise ValueError(f"config argument {key!r} must be one of {', '.join(map(str, allowed))}, "
                             f"got {out[key]!r}")
    return out


def _parse(arg: str | None, defaults: dict) -> ml_collections.ConfigDict:
    out = ml_collections.ConfigDict(defaults)
    if not arg:
        return out
    for item in arg.split(","):
        if not item:
            continue
        if "=" not in item:
            raise ValueError(f"config argument {item!r}: expected key=value (known keys: {sorted(defaults)})")
        key, value = item.split("=", 1)
        if key not in defaults:
            raise ValueError(f"config argument: unknown key {key!r}; known keys: {sorted(defaults)}")
        default = defaults[key]
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"config argument {key!r}: expected true/false, got {value!r}")
            out[key] = value.lower() in ("true", "1")
        elif isinstance(default, int):
            out[key] = int(value)
        elif isinstance(default, float):
            out[key] = float(value)
        else:
            out[key] = value
    return out


def optim(lr, warmup, schedule="cosine", name="adam", weight_decay=0.0) -> dict:
    """An optimizer section (``handjax.train.optim``) with the defaults every recipe shares."""
    return dict(name=name, lr=lr, schedule=schedule, warmup_steps=warmup, weight_decay=weight_decay,
                grad_clip=0.0, final_lr_fraction=0.0, momentum=0.9, decay_steps=(), decay_rate=0.1)
