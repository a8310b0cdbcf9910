"""Build the ``fphab`` tfds dataset from the manual FPHAB download.

    python -m data_pipelines.fphab.build --manual_dir RAW --data_dir OUT [--config hand_object_480]
        [--skip_corrupt] [--overwrite]

RAW holds Video_files/, Hand_pose_annotation_v1/, Subjects_info/,
data_split_action_recognition.txt (+ Object_6D_pose_annotation_v1_1/ for the hand_object
configs, optional Video_files_480/ and fhbhands_fits/). The dataset lands in
``OUT/fphab/<config>/1.0.0``; that path is printed on the last line.
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from data_pipelines import manual

from .fphab_dataset_builder import BUILDER_CONFIGS, NAME, get_builder


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = manual.build_parser(NAME, __doc__, manual_help="the extracted FPHAB download",
                                 configs=[c.name for c in BUILDER_CONFIGS], default_config="hand_object_480",
                                 skip_help="skip (and report) frames whose image or annotation file is corrupt "
                                           "or missing")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> str:
    return manual.build_command(parse_args(argv), get_builder)


if __name__ == "__main__":
    manual.run_command(main)
