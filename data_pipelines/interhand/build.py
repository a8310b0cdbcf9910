"""Build the ``interhand`` tfds dataset from the manual InterHand2.6M v1.0 download.

    python -m data_pipelines.interhand.build --manual_dir RAW --data_dir OUT [--config 5fps_hm]
        [--skip_corrupt] [--mano_dir MANO_MODELS] [--no_fix_left_shapedirs] [--no_part_seg] [--overwrite]

RAW is laid out as described by ``--help_layout`` (images/, annotations/, rootnet_output/).
The dataset lands in ``OUT/interhand/<config>/1.1.0``; that path is printed on the last
line. ``--mano_dir`` (folder with MANO_RIGHT.pkl / MANO_LEFT.pkl) gives the rest wrist
J0 used to express the MANO translation in the camera frame; without it the built-in
licence-free model is used (exact only for data generated with it). With ``--mano_dir`` the
build also renders DIGIT's part segmentation from the fits (``part_seg``; ~0.5-1.3 s per 512x334
frame on a 2-core CPU, see :mod:`data_pipelines.interhand.part_seg`); ``--no_part_seg`` skips it.
Without ``--mano_dir`` no masks are rendered (``has_part_seg`` False, said in the report).
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from data_pipelines import manual

from . import layout
from .interhand_dataset_builder import BUILDER_CONFIGS, NAME, get_builder


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = manual.build_parser(NAME, __doc__, manual_help="the extracted InterHand2.6M download",
                                 configs=[c.name for c in BUILDER_CONFIGS], default_config="5fps_hm",
                                 skip_help="skip (and report) samples whose image or annotation is corrupt or missing",
                                 help_layout=True)
    parser.add_argument("--mano_dir", default=None, help="folder with the official MANO_{RIGHT,LEFT}.pkl")
    parser.add_argument("--no_fix_left_shapedirs", action="store_true",
                        help="do not apply InterHand2.6M's left-hand shapedirs fix")
    parser.add_argument("--no_part_seg", action="store_true",
                        help="do not render DIGIT's part segmentation (it needs --mano_dir; ~0.5-1.3 s per frame)")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> str:
    args = parse_args(argv)
    return manual.build_command(args, get_builder, instructions=layout.instructions(), mano_dir=args.mano_dir,
                                fix_left_shapedirs=not args.no_fix_left_shapedirs,
                                render_part_seg=not args.no_part_seg)


if __name__ == "__main__":
    manual.run_command(main)
