"""HanCo as a tfds dataset (manual download): ``ensure_built(config, data_dir, manual_dir)``
returns the builder directory for ``tfds.builder_from_directory`` / the grain pipelines."""
from .hanco_dataset_builder import (
    BASE_CONFIGS,
    MANUAL_DOWNLOAD_INSTRUCTIONS,
    NAME,
    NUM_CAMERAS,
    Builder,
    HancoConfig,
    default_data_dir,
    ensure_built,
    frame_labels,
    get_builder,
    read_meta,
    video_id,
)

__all__ = ["BASE_CONFIGS", "MANUAL_DOWNLOAD_INSTRUCTIONS", "NAME", "NUM_CAMERAS", "Builder", "HancoConfig",
           "default_data_dir", "ensure_built", "frame_labels", "get_builder", "read_meta", "video_id"]
