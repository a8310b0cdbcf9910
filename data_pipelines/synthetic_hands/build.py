"""Build the synthetic hand dataset at any size.

    python -m data_pipelines.synthetic_hands.build --config default --data_dir DIR \
        [--num_sequences N] [--test_sequences M] [--frames T] [--image_size S] [--seed K] \
        [--annotate_every k] [--overwrite]

Sizes other than the named config's become a derived config (e.g. ``default_n50_s96``)
stored in its own directory ``DIR/synthetic_hands/<config>/<version>``. The data dir defaults
to ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``. An existing build is reused unless
``--overwrite`` is given. Prints the builder directory on the last line.
"""
from __future__ import annotations

from typing import Optional, Sequence

from data_pipelines.builtin import run_build_cli

from .synthetic_hands_dataset_builder import BASE_CONFIGS, NAME, OVERRIDABLE, get_builder


def main(argv: Optional[Sequence[str]] = None) -> str:
    return run_build_cli(NAME, __doc__, BASE_CONFIGS, OVERRIDABLE, get_builder, argv)


if __name__ == "__main__":
    main()
