"""COCO-WholeBody v1.0 hands as a tfds dataset (``coco_wholebody``) built from the manual download.

    python -m data_pipelines.coco_wholebody.build --manual_dir RAW --data_dir OUT

Read with ``tfds.builder_from_directory(OUT/coco_wholebody/default/1.0.0).as_data_source(split)``.
Layout, selection and keypoint order: :mod:`data_pipelines.coco_wholebody.layout`; features:
:mod:`.coco_wholebody_dataset_builder`.
"""
from .coco_wholebody_dataset_builder import (
    BUILDER_CONFIGS,
    NAME,
    Builder,
    CocoWholeBodyConfig,
    default_data_dir,
    ensure_built,
    get_builder,
)

__all__ = ["BUILDER_CONFIGS", "NAME", "Builder", "CocoWholeBodyConfig", "default_data_dir", "ensure_built",
           "get_builder"]
