"""Built-in identities dataset (tfds ``identities``): right-hand videos of distinct subjects
(fixed betas and skin per subject), train and test subjects disjoint (DexYCB ``s1``-style
unseen subjects), rendered with handjax.

``ensure_built(config_name, data_dir)`` builds a config once and returns its directory; read
it with :class:`data_pipelines.pipeline.FrameSource` (``subject_id`` per frame) and the
subjects' ground-truth betas with :func:`load_subjects`.
"""
from .identities_dataset_builder import (
    BASE_CONFIGS,
    NAME,
    OVERRIDABLE,
    SPLITS,
    Builder,
    IdentitiesConfig,
    ensure_built,
    get_builder,
    load_subjects,
    make_config,
    split_index,
)

__all__ = ["BASE_CONFIGS", "NAME", "OVERRIDABLE", "SPLITS", "Builder", "IdentitiesConfig", "ensure_built",
           "get_builder", "load_subjects", "make_config", "split_index"]
