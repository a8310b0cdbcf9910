"""Build the ``coco_wholebody`` tfds dataset from the manual COCO-WholeBody v1.0 download.

    python -m data_pipelines.coco_wholebody.build --manual_dir RAW --data_dir OUT [--skip_corrupt] [--overwrite]

RAW is laid out as described by ``--help_layout`` (images/{train,val}2017, annotations/ with
the whole-body jsons and, optionally, InterWild's MSCOCO_train_MANO_NeuralAnnot.json). The
dataset lands in ``OUT/coco_wholebody/default/1.0.0``; that path is printed on the last line.
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from data_pipelines import manual

from . import layout
from .coco_wholebody_dataset_builder import BUILDER_CONFIGS, NAME, get_builder


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = manual.build_parser(NAME, __doc__, manual_help="the COCO-WholeBody download (images/, annotations/)",
                                 configs=[c.name for c in BUILDER_CONFIGS], default_config="default",
                                 skip_help="skip (and report per split) samples whose image or annotation is corrupt "
                                           "or missing", help_layout=True)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> str:
    return manual.build_command(parse_args(argv), get_builder, instructions=layout.INSTRUCTIONS)


if __name__ == "__main__":
    manual.run_command(main)
