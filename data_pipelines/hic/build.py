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
from typing import Optional, Sequence

from data_pipelines import manual

from . import layout
from .hic_dataset_builder import BUILDER_CONFIGS, NAME, get_builder


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = manual.build_parser(NAME, __doc__, manual_help="InterWild's data/HIC/data folder (HIC.json, images, "
                                 "meshes)", configs=[c.name for c in BUILDER_CONFIGS], default_config="default",
                                 skip_help="skip (and report) samples whose image or mesh is corrupt or missing",
                                 help_layout=True)
    parser.add_argument("--mano_dir", default=None, help="folder with the official MANO_{RIGHT,LEFT}.pkl (joints)")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> str:
    args = parse_args(argv)
    return manual.build_command(args, get_builder, instructions=layout.INSTRUCTIONS, mano_dir=args.mano_dir)


if __name__ == "__main__":
    manual.run_command(main)
