"""DexYCB as a tfds dataset (``dexycb``) built from the manual download.

    python -m data_pipelines.dexycb.build --manual_dir RAW --data_dir OUT --config s0

Read with ``tfds.builder_from_directory(OUT/dexycb/s0/1.0.0).as_data_source(split)``.
Layout, split rules and conventions: :mod:`data_pipelines.dexycb.layout`; features:
:mod:`.dexycb_dataset_builder`; evaluation: :mod:`handjax.eval.dexycb`.
"""
from .dexycb_dataset_builder import (
    BASE_CONFIGS,
    NAME,
    Builder,
    DexYCBConfig,
    default_data_dir,
    ensure_built,
    get_builder,
    make_config,
    mano_rotmats,
)

__all__ = ["BASE_CONFIGS", "NAME", "Builder", "DexYCBConfig", "default_data_dir", "ensure_built", "get_builder",
           "make_config", "mano_rotmats"]
