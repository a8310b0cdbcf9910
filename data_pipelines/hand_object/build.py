"""Build the hand-object dataset at any size.

    python -m data_pipelines.hand_object.build --config default --data_dir DIR \
        [--num_sequences N] [--test_sequences M] [--frames T] [--image_size S] [--seed K] \
        [--annotate_every k]

Sizes other than the named config's become a derived config (e.g. ``default_n50_s96``)
stored in its own directory ``DIR/hand_object/<config>/<version>``. The data dir defaults to
``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``. An existing build is reused unless
``--overwrite`` is given. Prints the builder directory on the last line.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from typing import Callable, Optional, Sequence

from .hand_object_dataset_builder import BASE_CONFIGS, NAME, OVERRIDABLE, get_builder


def run_build_cli(name: str, doc: str, base_configs, overridable: Sequence[str], builder_fn: Callable,
                  argv: Optional[Sequence[str]] = None) -> str:
    """The CLI of a built-in (generated) dataset: --config, --data_dir, one int flag per
    overridable size, --overwrite; builds (or reuses), reports sizes and time on stderr and
    prints the builder directory."""
    parser = argparse.ArgumentParser(prog=f"python -m data_pipelines.{name}.build", description=doc.split("\n\n")[0])
    parser.add_argument("--config", default="default", choices=sorted(base_configs))
    parser.add_argument("--data_dir", default=None, help="tfds data dir (default $TFDS_DATA_DIR or "
                                                         "~/tensorflow_datasets)")
    for key in overridable:
        parser.add_argument(f"--{key}", type=int, default=None, help=f"override the config's {key}")
    parser.add_argument("--overwrite", action="store_true", help="delete an existing build first")
    args = parser.parse_args(argv)
    builder = builder_fn(args.config, args.data_dir, **{k: getattr(args, k) for k in overridable})
    reused = builder.is_prepared() and not args.overwrite
    if args.overwrite and builder.is_prepared():
        shutil.rmtree(builder.data_path)
    start = time.perf_counter()
    if not builder.is_prepared():
        builder.download_and_prepare()
    counts = ", ".join(f"{split}: {info.num_examples} frames" for split, info in builder.info.splits.items())
    print(f"{name}/{builder.builder_config.name} ({counts}) {'reused' if reused else 'built'} in "
          f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
    path = str(builder.data_path)
    print(path)
    return path


def main(argv: Optional[Sequence[str]] = None) -> str:
    return run_build_cli(NAME, __doc__, BASE_CONFIGS, OVERRIDABLE, get_builder, argv)


if __name__ == "__main__":
    main()
