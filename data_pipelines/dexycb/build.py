"""Build the ``dexycb`` tfds dataset from the manual DexYCB download.

    python -m data_pipelines.dexycb.build --manual_dir RAW --data_dir OUT [--config s0]
        [--skip_corrupt] [--sequences_per_subject N] [--serials S1,S2] [--overwrite]

RAW is the toolkit's $DEX_YCB_DIR (subject folders + calibration/). The dataset lands in
``OUT/dexycb/<config>/1.0.0`` (derived name with --sequences_per_subject / --serials,
e.g. ``s1_seq2_cam836212060125``); that path is printed on the last line.
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from data_pipelines import manual

from . import layout
from .dexycb_dataset_builder import BASE_CONFIGS, NAME, get_builder


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = manual.build_parser(NAME, __doc__, manual_help="the extracted DexYCB download ($DEX_YCB_DIR)",
                                 configs=sorted(BASE_CONFIGS), default_config="s0", config_help="toolkit setup",
                                 skip_help="skip (and report) samples whose image or label file is corrupt")
    parser.add_argument("--sequences_per_subject", type=int, default=None,
                        help=f"debug subset: first N of the {layout.SEQUENCES_PER_SUBJECT} sequences of each subject")
    parser.add_argument("--serials", default=None, help="debug subset: comma-separated camera serials")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> str:
    args = parse_args(argv)
    serials = [s for s in args.serials.split(",") if s] if args.serials else None
    return manual.build_command(args, get_builder, sequences_per_subject=args.sequences_per_subject, serials=serials)


if __name__ == "__main__":
    manual.run_command(main)
