"""Built-in hand-object video dataset (tfds ``hand_object``): a right hand holding one of
several textured procedural objects, rendered with handjax.

``ensure_built(config_name, data_dir)`` builds a config once and returns its directory; read
it with :class:`data_pipelines.pipeline.FrameSource` and the canonical object meshes with
:func:`load_object_meshes`.
"""
from .hand_object_dataset_builder import (
    BASE_CONFIGS,
    NAME,
    OVERRIDABLE,
    SPLITS,
    Builder,
    HandObjectConfig,
    ensure_built,
    get_builder,
    load_object_meshes,
    make_config,
    split_index,
)
from .objects import NUM_FACES, NUM_VERTICES, OBJECT_NAMES

__all__ = [
    "BASE_CONFIGS", "NAME", "NUM_FACES", "NUM_VERTICES", "OBJECT_NAMES", "OVERRIDABLE", "SPLITS", "Builder",
    "HandObjectConfig", "ensure_built", "get_builder", "load_object_meshes", "make_config", "split_index",
]
