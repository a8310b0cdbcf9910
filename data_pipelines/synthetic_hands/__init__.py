"""Built-in synthetic hand-video dataset (tfds ``synthetic_hands``), rendered with handjax.

``ensure_built(config_name, data_dir)`` builds a config once and returns its directory;
read it with ``tfds.builder_from_directory(dir).as_data_source(split)`` or through
:func:`data_pipelines.pipeline.make_pipeline`.
"""
from .synthetic_hands_dataset_builder import (
    BASE_CONFIGS,
    NAME,
    OVERRIDABLE,
    SPLITS,
    Builder,
    SyntheticHandsConfig,
    default_data_dir,
    ensure_built,
    get_builder,
    make_config,
    split_index,
)

__all__ = [
    "BASE_CONFIGS", "NAME", "OVERRIDABLE", "SPLITS", "Builder", "SyntheticHandsConfig", "default_data_dir",
    "ensure_built", "get_builder", "make_config", "split_index",
]
