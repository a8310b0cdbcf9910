"""HIC (InterWild's test set) as a tfds dataset (``hic``) built from the manual download.

    python -m data_pipelines.hic.build --manual_dir RAW --data_dir OUT [--mano_dir MANO_MODELS]

Read with ``tfds.builder_from_directory(OUT/hic/default/1.0.0).as_data_source("test")``.
Layout, conventions and the PLY reader: :mod:`data_pipelines.hic.layout`; features:
:mod:`.hic_dataset_builder`.
"""
from .hic_dataset_builder import BUILDER_CONFIGS, NAME, Builder, HICConfig, default_data_dir, ensure_built, get_builder

__all__ = ["BUILDER_CONFIGS", "NAME", "Builder", "HICConfig", "default_data_dir", "ensure_built", "get_builder"]
