"""Build the ``hic`` tfds dataset (test split) from the manual HIC download with InterWild's annotations.

    python -m data_pipelines.hic.build --manual_dir RAW --data_dir OUT [--mano_dir MANO_MODELS]
        [--skip_corrupt] [--overwrite]

RAW is InterWild's ``data/HIC/data`` folder: HIC.json and every image and mesh file it names
(``--help_layout``). ``--mano_dir`` (folder with the official MANO_RIGHT.pkl / MANO_LEFT.pkl)
derives 21 joints per hand from the meshes with MANO's J_regressor; without it no joints are
stored. The dataset lands in ``OUT/hic/default/1.0.0``; that path is printed on the last line.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from data_pipelines import manual
from data_pipelines.manual import CorruptFileError, ManualDirError

from . import layout
from .hic_dataset_builder import BUILDER_CONFIGS, NAME, get_builder


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = manual.build_parser(NAME, __doc__, manual_help="InterWild's data/HIC/data folder (HIC.json, images, "
                                 "meshes)", configs=[c.name for c in BUILDER_CONFIGS], default_config="default",
                                 skip_help="skip (and report) samples whose image or mesh is corrupt or missing")
    parser.add_argument("--mano_dir", default=None, help="folder with the official MANO_{RIGHT,LEFT}.pkl (joints)")
    parser.add_argument("--help_layout", action="store_true", help="print the expected download layout")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> str:
    args = parse_args(argv)
    if args.help_layout:
        print(layout.INSTRUCTIONS)
        return ""
    builder = get_builder(args.config, args.data_dir, skip_corrupt=args.skip_corrupt, mano_dir=args.mano_dir)
    return manual.build_and_report(builder, args.manual_dir, overwrite=args.overwrite,
                                   skip_corrupt=args.skip_corrupt)


if __name__ == "__main__":
    try:
        main()
    except (ManualDirError, CorruptFileError) as err:  # a clear message, no traceback
        sys.exit(f"error: {err}")
