"""InterHand2.6M v1.0 as a tfds dataset (``interhand``) built from the manual download.

    python -m data_pipelines.interhand.build --manual_dir RAW --data_dir OUT --config 5fps_hm

Read with ``tfds.builder_from_directory(OUT/interhand/5fps_hm/1.1.0).as_data_source(split)``
(e.g. wrapped in ``grain.MapDataset.source``). Layout, conventions and conversions:
:mod:`data_pipelines.interhand.layout`; features: :mod:`.interhand_dataset_builder`.
"""
from .interhand_dataset_builder import (
    BUILDER_CONFIGS,
    NAME,
    Builder,
    InterHandConfig,
    default_data_dir,
    ensure_built,
    get_builder,
)

__all__ = ["BUILDER_CONFIGS", "NAME", "Builder", "InterHandConfig", "default_data_dir", "ensure_built", "get_builder"]
