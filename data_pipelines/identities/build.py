"""Build the identities dataset at any size.

    python -m data_pipelines.identities.build --config default --data_dir DIR \
        [--train_subjects N] [--test_subjects M] [--sequences_per_subject Q] \
        [--test_sequences_per_subject Q'] [--frames T] [--image_size S] [--crop_size C] [--seed K] \
        [--annotate_every k] [--overwrite]

Sizes other than the named config's become a derived config (e.g. ``default_ns8``) stored in
its own directory ``DIR/identities/<config>/<version>``. The data dir defaults to
``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``. An existing build is reused unless
``--overwrite`` is given. Prints the builder directory on the last line.
"""
from __future__ import annotations

from typing import Optional, Sequence

from data_pipelines.builtin import run_build_cli

from .identities_dataset_builder import BASE_CONFIGS, NAME, OVERRIDABLE, get_builder


def main(argv: Optional[Sequence[str]] = None) -> str:
    return run_build_cli(NAME, __doc__, BASE_CONFIGS, OVERRIDABLE, get_builder, argv)


if __name__ == "__main__":
    main()
