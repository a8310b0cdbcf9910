"""Build the HanCo tfds dataset from the manual download (no TensorFlow needed).

    python -m data_pipelines.hanco.build --manual_dir RAW --data_dir OUT [--skip_corrupt] [--overwrite]

RAW is the folder holding meta.json, rgb/, xyz/, calib/ and shape/ (see
``MANUAL_DOWNLOAD_INSTRUCTIONS``). The data dir defaults to ``$TFDS_DATA_DIR`` or
``~/tensorflow_datasets``. A corrupt file stops the build naming it unless ``--skip_corrupt``:
then the sample is skipped and reported. Prints the builder directory on the last line.
"""
from __future__ import annotations

from typing import Optional, Sequence

from data_pipelines import manual

from .hanco_dataset_builder import BASE_CONFIGS, get_builder


def main(argv: Optional[Sequence[str]] = None) -> str:
    parser = manual.build_parser("hanco", __doc__, manual_help="folder with the unzipped HanCo download",
                                 configs=sorted(BASE_CONFIGS), default_config="default", manual_required=True)
    args = parser.parse_args(argv)
    builder = get_builder(args.config, args.data_dir, skip_corrupt=args.skip_corrupt)
    return manual.build_and_report(builder, args.manual_dir, overwrite=args.overwrite,
                                   skip_corrupt=args.skip_corrupt)


if __name__ == "__main__":
    main()
