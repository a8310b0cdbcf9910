"""Build the two-hand dataset at any size.

    python -m data_pipelines.two_hands.build --config default --data_dir DIR \
        [--num_sequences N] [--test_sequences M] [--frames T] [--image_size H] [--seed K] \
        [--annotate_every k] [--overwrite]

image_size is the person-crop height (a multiple of 4; the width is 3/4 of it). Sizes other
than the named config's become a derived config (e.g. ``default_n50_s96``) stored in its own
directory ``DIR/two_hands/<config>/<version>``. The data dir defaults to ``$TFDS_DATA_DIR`` or
``~/tensorflow_datasets``. An existing build is reused unless ``--overwrite`` is given.
Prints the builder directory on the last line. (The flags of data_pipelines.manual's shared
parser, --manual_dir and --skip_corrupt, have no meaning for a rendered dataset.)
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from typing import Optional, Sequence

from .two_hands_dataset_builder import BASE_CONFIGS, OVERRIDABLE, ensure_built, get_builder


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m data_pipelines.two_hands.build",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="default", choices=sorted(BASE_CONFIGS))
    parser.add_argument("--data_dir", default=None, help="tfds data dir (default $TFDS_DATA_DIR or "
                                                         "~/tensorflow_datasets)")
    for key in OVERRIDABLE:
        parser.add_argument(f"--{key}", type=int, default=None, help=f"override the config's {key}")
    parser.add_argument("--overwrite", action="store_true", help="delete an existing build first")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> str:
    args = parse_args(argv)
    overrides = {k: getattr(args, k) for k in OVERRIDABLE}
    try:
        builder = get_builder(args.config, args.data_dir, **overrides)
    except ValueError as err:
        raise SystemExit(f"python -m data_pipelines.two_hands.build: {err}") from None
    reused = builder.is_prepared() and not args.overwrite
    if args.overwrite and builder.is_prepared():
        shutil.rmtree(builder.data_path)
    start = time.perf_counter()
    path = ensure_built(args.config, args.data_dir, **overrides)
    info = get_builder(args.config, args.data_dir, **overrides).info
    counts = ", ".join(f"{name}: {split.num_examples} frames" for name, split in info.splits.items())
    print(f"two_hands/{builder.builder_config.name} ({counts}) ready in {time.perf_counter() - start:.1f} s"
          + (" (already built; --overwrite rebuilds it)" if reused else ""), file=sys.stderr)
    print(path)
    return path


if __name__ == "__main__":
    main()
