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
    parser = argparse.ArgumentParser(prog="python -m data_pipelines.ho3d.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--manual_dir", required=True, help="the unzipped HO3D_v2 / HO3D_v3 folder")
    parser.add_argument("--data_dir", default=None, help="tfds data dir (default $TFDS_DATA_DIR or "
                                                         "~/tensorflow_datasets)")
    parser.add_argument("--config", default="v2", choices=sorted(BASE_CONFIGS), help="dataset release")
    parser.add_argument("--mano_model", default=None, help="MANO right-hand model (pkl/npz) to store vertices")
    parser.add_argument("--skip_corrupt", action="store_true", help="skip and report frames with corrupt files")
    parser.add_argument("--overwrite", action="store_true", help="delete an existing build first")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> str:
    args = parse_args(argv)
    builder = get_builder(args.config, args.data_dir, skip_corrupt=args.skip_corrupt, mano_model=args.mano_model)
    return manual.build_and_report(builder, args.manual_dir, overwrite=args.overwrite,
                                   skip_corrupt=args.skip_corrupt)


if __name__ == "__main__":
    main()
