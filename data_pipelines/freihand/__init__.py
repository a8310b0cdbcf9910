"""FreiHAND as a tfds dataset (manual download): ``ensure_built(config, data_dir, manual_dir)``
returns the builder directory for ``tfds.builder_from_directory`` / the grain pipelines."""
from .freihand_dataset_builder import (
    BASE_CONFIGS,
    MANUAL_DOWNLOAD_INSTRUCTIONS,
    NAME,
    SPLITS,
    VERSIONS,
    Builder,
    FreihandConfig,
    default_data_dir,
    ensure_built,
    get_builder,
    image_id,
    split_mano,
)

__all__ = ["BASE_CONFIGS", "MANUAL_DOWNLOAD_INSTRUCTIONS", "NAME", "SPLITS", "VERSIONS", "Builder",
           "FreihandConfig", "default_data_dir", "ensure_built", "get_builder", "image_id", "split_mano"]
