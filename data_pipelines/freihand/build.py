"""Build the FreiHAND tfds dataset from the manual download (no TensorFlow needed).

    python -m data_pipelines.freihand.build --manual_dir RAW --data_dir OUT [--config default|gs]
        [--skip_corrupt] [--overwrite]

RAW is the folder holding the unzipped FreiHAND_pub_v2 + FreiHAND_pub_v2_eval downloads
(see ``MANUAL_DOWNLOAD_INSTRUCTIONS``). The data dir defaults to ``$TFDS_DATA_DIR`` or
``~/tensorflow_datasets``. A corrupt image/annotation stops the build naming the file
unless ``--skip_corrupt``: then the sample is skipped and every skipped file is reported
at the end (and listed in ``skipped_files.json`` in the builder directory). Prints the
builder directory on the last line.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from data_pipelines import manual

from .freihand_dataset_builder import BASE_CONFIGS, NAME, get_builder


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = manual.build_parser("freihand", __doc__, manual_help="folder with the unzipped FreiHAND download",
                                 configs=sorted(BASE_CONFIGS), default_config="default", manual_required=True,
                                 skip_help="skip and report samples with corrupt files")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> str:
    args = parse_args(argv)
    builder = get_builder(args.config, args.data_dir, skip_corrupt=args.skip_corrupt)
    return manual.build_and_report(builder, args.manual_dir, overwrite=args.overwrite,
                                   skip_corrupt=args.skip_corrupt)


if __name__ == "__main__":
    main()
