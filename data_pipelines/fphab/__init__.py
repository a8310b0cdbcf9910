"""FPHAB (First-Person Hand Action Benchmark) as a tfds dataset (``fphab``) from the manual download.

    python -m data_pipelines.fphab.build --manual_dir RAW --data_dir OUT --config hand_object_480

Read with ``tfds.builder_from_directory(OUT/fphab/hand_object_480/1.0.0).as_data_source(split)``.
Layout, constants (camera calibration, joint order tables) and conversions:
:mod:`data_pipelines.fphab.layout`; features: :mod:`.fphab_dataset_builder`.
"""
from .fphab_dataset_builder import (
    BUILDER_CONFIGS,
    NAME,
    Builder,
    FPHABConfig,
    default_data_dir,
    ensure_built,
    get_builder,
)

__all__ = ["BUILDER_CONFIGS", "NAME", "Builder", "FPHABConfig", "default_data_dir", "ensure_built", "get_builder"]
