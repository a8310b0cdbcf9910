"""Build the HO-3D tfds dataset (v2 or v3) from the manual download (no TensorFlow needed).

    python -m data_pipelines.ho3d.build --manual_dir RAW --data_dir OUT --config v2|v3
        [--mano_model MANO_RIGHT.pkl] [--skip_corrupt] [--overwrite]

RAW is the unzipped HO3D_v2 / HO3D_v3 folder (see ``MANUAL_DOWNLOAD_INSTRUCTIONS``).
``--mano_model`` (your MANO right-hand pkl/npz, or ``builtin`` for a smoke test) adds the
MANO vertices of every annotated frame (needed for PA-MPVPE / F-scores of local
evaluation). A corrupt image/meta file stops the build naming the file unless
``--skip_corrupt``: then the frame is skipped and all skipped files are reported at the end
(and listed in ``skipped_files.json`` in the builder directory). Prints the builder
directory on the last line.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from data_pipelines import manual

from .ho3d_dataset_builder import BASE_CONFIGS, NAME, get_builder


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = manual.build_parser("ho3d", __doc__, manual_help="the unzipped HO3D_v2 / HO3D_v3 folder",
                                 configs=sorted(BASE_CONFIGS), default_config="v2", config_help="dataset release",
                                 manual_required=True, skip_help="skip and report frames with corrupt files")
    parser.add_argument("--mano_model", default=None, help="MANO right-hand model (pkl/npz) to store vertices")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> str:
    args = parse_args(argv)
    builder = get_builder(args.config, args.data_dir, skip_corrupt=args.skip_corrupt, mano_model=args.mano_model)
    return manual.build_and_report(builder, args.manual_dir, overwrite=args.overwrite,
                                   skip_corrupt=args.skip_corrupt)


if __name__ == "__main__":
    main()
