"""Built-in two-hand person-crop dataset (tfds ``two_hands``), rendered with handjax.

``ensure_built(config_name, data_dir)`` builds a config once and returns its directory;
read it with ``tfds.builder_from_directory(dir).as_data_source(split)`` or through
:func:`data_pipelines.pipeline.make_pipeline` (two-hand samples, ``crop="hands"`` or
``crop="person"``).
"""
from .two_hands_dataset_builder import (
    BASE_CONFIGS,
    HAND_TYPES,
    NAME,
    OVERRIDABLE,
    SPLITS,
    Builder,
    TwoHandsConfig,
    ensure_built,
    get_builder,
    make_config,
    split_index,
)

__all__ = [
    "BASE_CONFIGS", "HAND_TYPES", "NAME", "OVERRIDABLE", "SPLITS", "Builder", "TwoHandsConfig", "ensure_built",
    "get_builder", "make_config", "split_index",
]
