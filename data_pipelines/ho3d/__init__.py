"""HO-3D (v2 / v3) as a tfds dataset (manual download): ``ensure_built(config, data_dir, manual_dir)``
returns the builder directory for ``tfds.builder_from_directory`` / the grain pipelines."""
from .ho3d_dataset_builder import (
    BASE_CONFIGS,
    MANUAL_DOWNLOAD_INSTRUCTIONS,
    NAME,
    SPLITS,
    Builder,
    Ho3dConfig,
    default_data_dir,
    ensure_built,
    get_builder,
    make_mano_fn,
    meta_to_labels,
    read_split_file,
)

__all__ = ["BASE_CONFIGS", "MANUAL_DOWNLOAD_INSTRUCTIONS", "NAME", "SPLITS", "Builder", "Ho3dConfig",
           "default_data_dir", "ensure_built", "get_builder", "make_mano_fn", "meta_to_labels", "read_split_file"]
