"""Shared helpers of the real-dataset builders (manual downloads -> tfds ArrayRecord).

Stable API (used by every builder under ``data_pipelines/``):

Manual directory
    ``check_manual_dir(manual_dir, required, *, dataset, instructions) -> Path``
        ``required``: relative paths; a trailing ``/`` means a directory; a tuple of paths
        means "any one of these" (e.g. ``("rgb/0000.png", "rgb/0000.jpg")``). Raises ONE
        :class:`ManualDirError` listing EVERY missing entry, followed by the builder's
        download instructions. ``missing_paths(manual_dir, required) -> list[str]`` is the
        check without raising.
    ``resolve_any(root, alternatives) -> Path``: the first existing path of the alternatives.

Reading annotation files (every failure is a :class:`CorruptFileError` naming the file)
    ``load_json(path)``, ``load_yaml(path)`` (``yaml.safe_load``: no Python objects),
    ``load_pickle_restricted(path)``: dataset pickles (e.g. HO3D ``meta/*.pkl``) with an
        allow-list of numpy reconstruction globals (``_reconstruct``, ``_frombuffer``,
        ``ndarray``, ``dtype``, ``scalar``, under both ``numpy.core`` and ``numpy._core``)
        plus builtins ``set`` / ``frozenset``; Python-2 pickles are read with ``latin1``
        (their ``str`` array payloads become bytes again). Any other global raises
        :class:`RestrictedPickleError` naming the global and the file.
    ``as_array(value, shape, *, path, key, dtype=np.float32) -> np.ndarray``: checked
        conversion of an annotation value (``-1`` in ``shape`` = any size), a
        :class:`CorruptFileError` naming file, key, expected and actual shape otherwise.

Images
    ``read_image(path) -> EncodedImage(data, format, shape)``: the file's bytes, fully
        decoded once with PIL to detect corruption (truncated/garbled files raise
        :class:`CorruptFileError`); ``format`` is ``"jpeg"`` or ``"png"``.
    ``image_bytes(path, fmt) -> bytes``: the original bytes when the file already is
        ``fmt`` (JPEGs are never re-encoded), else decoded and re-encoded.
    ``encode_png(array)``, ``encode_jpeg(array, quality=95)``, ``decode_image(data, mode)``.

Corrupt samples
    ``CorruptPolicy(skip=False, dataset="")``: ``policy.handle(err)`` re-raises a
        :class:`CorruptFileError` (the build stops, the file is named) unless ``skip``;
        then it counts and records it, and ``policy.report()`` summarises what was skipped
        (``policy.skipped``: list of (path, reason)). ``policy.write_report(path)`` saves it
        as json. ``handle(err, split=..., sample_id=...)`` also files the skip under its
        split: ``policy.split_records(split)`` lists that split's skips only (each with
        sample_id, path, reason), ``policy.split_report(split)`` summarises them.

Record order
    ``record_key(position, total) -> int``: tfds example key that keeps generation order
        under ``disable_shuffling`` (tfds sorts by key) while spreading the records over
        tfds's on-disk sort buckets, so big splits are not sorted in memory.

Build command
    ``prepare(builder, manual_dir, *, overwrite=False) -> str``: check the manual dir
        (:meth:`check_manual_dir` of the builder when it has one), build with tfds (no
        TensorFlow needed) and return the builder directory.
    ``get_named_builder(builder_cls, config, data_dir, **kw)`` and ``ensure_prepared(builder,
        manual_dir, instructions)``: the bodies of a dataset's ``get_builder`` / ``ensure_built``
        (``default_data_dir()``: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
    ``build_parser(...)``, ``build_command(args, get_builder, instructions=..., **kw)``,
        ``build_and_report(...)`` and ``run_command(main)``: the pieces of every
        ``python -m data_pipelines.<name>.build`` command line.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "CorruptFileError", "CorruptPolicy", "EncodedImage", "ManualDirError", "RestrictedPickleError", "as_array",
    "check_manual_dir", "decode_image", "encode_jpeg", "encode_png", "image_bytes", "load_json",
    "load_pickle_restricted", "load_yaml", "missing_paths", "prepare", "read_image", "record_key", "resolve_any",
    "build_and_report", "build_command", "build_parser", "default_data_dir", "ensure_prepared", "get_named_builder",
    "run_command",
]

Required = Union[str, Tuple[str, ...]]
MAX_LISTED = 200  # missing entries spelled out in an error message (all are in ManualDirError.missing)


# ----------------------------------------------------------------------------- errors
class ManualDirError(FileNotFoundError):
    """Files/folders missing from a manual download directory; ``missing`` lists all of them."""

    def __init__(self, message: str, missing: Sequence[str]):
        super().__init__(message)
        self.missing = list(missing)


class CorruptFileError(ValueError):
    """A file of the download cannot be read or has unexpected content (``path``, ``reason``)."""

    def __init__(self, path: Union[str, os.PathLike], reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class RestrictedPickleError(CorruptFileError):
    """A pickle referenced a global outside the numpy allow-list."""


# ----------------------------------------------------------------------------- manual dir
def _exists(root: Path, rel: str) -> bool:
    path = root / rel
    return path.is_dir() if rel.endswith("/") else path.is_file()


def missing_paths(manual_dir: Union[str, os.PathLike], required: Iterable[Required]) -> List[str]:
    """Entries of ``required`` absent under ``manual_dir`` (alternatives joined with ' | ')."""
    root = Path(manual_dir)
    missing = []
    for entry in required:
        options = (entry,) if isinstance(entry, str) else tuple(entry)
        if not any(_exists(root, rel) for rel in options):
            missing.append(" | ".join(options))
    return missing


def check_manual_dir(manual_dir: Union[str, os.PathLike, None], required: Iterable[Required], *, dataset: str,
                     instructions: str) -> Path:
    """``manual_dir`` as a Path if every required entry exists; else ONE ManualDirError listing all."""
    if manual_dir is None or not os.fspath(manual_dir):
        raise ManualDirError(f"{dataset}: no manual directory given (--manual_dir)\n\n{instructions}", ["<manual_dir>"])
    root = Path(manual_dir).expanduser()
    if not root.is_dir():
        raise ManualDirError(f"{dataset}: manual directory {root} does not exist\n\n{instructions}", [os.fspath(root)])
    missing = missing_paths(root, required)
    if missing:
        listed = "\n".join(f"  {m}" for m in missing[:MAX_LISTED])
        more = f"\n  ... and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
        raise ManualDirError(
            f"{dataset}: {len(missing)} required file(s)/folder(s) missing under {root}:\n{listed}{more}\n\n"
            f"{instructions}", missing)
    return root


def resolve_any(root: Union[str, os.PathLike], alternatives: Sequence[str]) -> Path:
    """The first of ``alternatives`` (relative to ``root``) that is a file; FileNotFoundError otherwise."""
    for rel in alternatives:
        path = Path(root) / rel
        if path.is_file():
            return path
    raise FileNotFoundError(f"none of {list(alternatives)} exists under {root}")


# ----------------------------------------------------------------------------- annotation files
def load_json(path: Union[str, os.PathLike]) -> Any:
    """Parsed json; CorruptFileError naming the file on bad syntax/encoding."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptFileError(path, f"not valid json ({err})") from None


def load_yaml(path: Union[str, os.PathLike]) -> Any:
    """Parsed yaml with the safe loader (plain data only); CorruptFileError on bad content."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        with open(path, "rb") as fh:
            return yaml.load(fh, Loader=loader)
    except yaml.YAMLError as err:
        raise CorruptFileError(path, f"not valid yaml ({err})") from None


_NUMPY_GLOBALS = {
    ("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"),
}
_BUILTIN_GLOBALS = {"set": set, "frozenset": frozenset}


def _numpy_core_module(name: str):
    """numpy's ``_core.<name>`` (numpy >= 2) or ``core.<name>`` (numpy 1.x)."""
    import importlib

    try:
        return importlib.import_module("numpy._core." + name)
    except ImportError:
        return importlib.import_module("numpy.core." + name)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def __init__(self, fh, path: str):
        super().__init__(fh, encoding="latin1")
        self._path = path

    def find_class(self, module: str, name: str):
        if module in ("builtins", "__builtin__") and name in _BUILTIN_GLOBALS:
            return _BUILTIN_GLOBALS[name]
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        for prefix in ("numpy.core.", "numpy._core."):
            if module.startswith(prefix) and (module[len(prefix):], name) in _NUMPY_GLOBALS:
                return getattr(_numpy_core_module(module[len(prefix):]), name)
        raise RestrictedPickleError(
            self._path, f"pickle refers to global {module}.{name}, which is not allowed (only numpy array "
                        f"reconstruction globals and builtins set/frozenset are loaded from dataset pickles)")


def load_pickle_restricted(path: Union[str, os.PathLike]) -> Any:
    """A dataset pickle (Python 2 or 3) holding plain data and numpy arrays only.

    Any global outside the allow-list (see module docstring) raises RestrictedPickleError
    naming it and the file; truncated/garbled pickles raise CorruptFileError.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            return _NumpyOnlyUnpickler(fh, path).load()
    except CorruptFileError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, UnicodeDecodeError) as err:
        raise CorruptFileError(path, f"cannot unpickle ({type(err).__name__}: {err})") from None


def as_array(value: Any, shape: Sequence[int], *, path: Union[str, os.PathLike], key: str,
             dtype=np.float32) -> np.ndarray:
    """``value`` as an array of ``shape`` (``-1`` = any size) and ``dtype``; CorruptFileError otherwise."""
    if value is None:
        raise CorruptFileError(path, f"key {key!r} is None, expected an array of shape {tuple(shape)}")
    try:
        arr = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise CorruptFileError(path, f"key {key!r}: cannot convert to {np.dtype(dtype).name} ({err})") from None
    if arr.ndim != len(shape) or any(s != -1 and s != a for s, a in zip(shape, arr.shape)):
        raise CorruptFileError(path, f"key {key!r} has shape {arr.shape}, expected {tuple(shape)}")
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        raise CorruptFileError(path, f"key {key!r} contains non-finite values")
    return arr


# ----------------------------------------------------------------------------- images
@dataclasses.dataclass(frozen=True)
class EncodedImage:
    """An image file's bytes as stored, its format ('jpeg'/'png') and decoded shape (H, W, C)."""

    data: bytes
    format: str
    shape: Tuple[int, int, int]


_PIL_FORMATS = {"JPEG": "jpeg", "PNG": "png"}
_CHANNELS = {"L": 1, "1": 1, "P": 3, "RGB": 3, "RGBA": 4, "LA": 2, "I;16": 1, "I": 1, "CMYK": 4}


def read_image(path: Union[str, os.PathLike]) -> EncodedImage:
    """Bytes + format + shape of a JPEG/PNG file, fully decoded once to detect corruption."""
    path = os.fspath(path)
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = _PIL_FORMATS.get(img.format or "")
            if fmt is None:
                raise CorruptFileError(path, f"expected a JPEG or PNG image, got {img.format}")
            img.load()
            shape = (img.height, img.width, _CHANNELS.get(img.mode, 3))
    except CorruptFileError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise CorruptFileError(path, f"cannot decode image ({err})") from None
    return EncodedImage(data, fmt, shape)


def decode_image(data: bytes, mode: str = "RGB") -> np.ndarray:
    """Encoded bytes -> uint8 array: (H, W, 3) for mode 'RGB', (H, W) for 'L'."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert(mode))


def encode_png(array: np.ndarray) -> bytes:
    """Lossless PNG of a uint8 (H, W), (H, W, 1) or (H, W, 3) array."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"encode_png: expected uint8, got {array.dtype}")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def encode_jpeg(array: np.ndarray, quality: int = 95) -> bytes:
    """JPEG of a uint8 (H, W) or (H, W, 3) array."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"encode_jpeg: expected uint8, got {array.dtype}")
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def image_bytes(path: Union[str, os.PathLike], fmt: str) -> bytes:
    """Bytes of the image at ``path`` in format ``fmt`` ('jpeg'/'png'): the original bytes when
    the file already has that format (verified decodable), else decoded and re-encoded as RGB."""
    if fmt not in ("jpeg", "png"):
        raise ValueError(f"image_bytes: fmt must be 'jpeg' or 'png', got {fmt!r}")
    image = read_image(path)
    if image.format == fmt:
        return image.data
    rgb = decode_image(image.data, "RGB")
    return encode_png(rgb) if fmt == "png" else encode_jpeg(rgb)


# ----------------------------------------------------------------------------- corrupt samples
class CorruptPolicy:
    """What a builder does with a corrupt file: stop naming it (default) or skip and count.

    ``handle(err)`` re-raises ``err`` unless ``skip``; with ``skip`` it records (path, reason).
    """

    def __init__(self, skip: bool = False, dataset: str = ""):
        self.skip = bool(skip)
        self.dataset = dataset
        self.skipped: List[Tuple[str, str]] = []
        self.records: List[dict] = []  # {"split", "sample_id", "path", "reason"} per skip

    def handle(self, err: CorruptFileError, *, split: Optional[str] = None, sample_id: Any = None) -> None:
        if not isinstance(err, CorruptFileError):
            raise TypeError(f"CorruptPolicy.handle expects a CorruptFileError, got {type(err).__name__}") from err
        if not self.skip:
            raise err
        self.skipped.append((err.path, err.reason))
        self.records.append({"split": split, "sample_id": sample_id, "path": err.path, "reason": err.reason})

    def split_records(self, split: str) -> List[dict]:
        """The skips filed under ``split`` (``handle(..., split=split)``): sample_id, path, reason."""
        return [{k: r[k] for k in ("sample_id", "path", "reason")} for r in self.records if r["split"] == split]

    def split_report(self, split: str) -> str:
        """One split's skips, one line each (sample id, file, reason)."""
        name = f"{self.dataset} " if self.dataset else ""
        recs = self.split_records(split)
        if not recs:
            return f"{name}split {split}: no corrupt files"
        lines = [f"{name}split {split}: skipped {len(recs)} sample(s) with corrupt or missing files:"]
        lines += [f"  sample {r['sample_id']}: {r['path']}: {r['reason']}" for r in recs]
        return "\n".join(lines)

    @property
    def count(self) -> int:
        return len(self.skipped)

    def report(self) -> str:
        name = f"{self.dataset}: " if self.dataset else ""
        if not self.skipped:
            return f"{name}no corrupt files"
        lines = [f"{name}skipped {self.count} sample(s) with corrupt files:"]
        for r in self.records:  # each skip once, with its split and sample id when the builder gave them
            where = "".join([f"split {r['split']}, " if r["split"] is not None else "",
                             f"sample {r['sample_id']}: " if r["sample_id"] is not None else ""])
            lines.append(f"  {where.rstrip(', ') + ': ' if where.endswith(', ') else where}{r['path']}: {r['reason']}")
        return "\n".join(lines)

    def write_report(self, path: Union[str, os.PathLike]) -> None:
        with open(path, "w") as fh:
            json.dump({"dataset": self.dataset, "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
                       "records": self.records}, fh, indent=2)


# ----------------------------------------------------------------------------- tfds helpers
def default_data_dir() -> str:
    """``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``."""
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


_KEY_SPACE = 1 << 127  # tfds keys are hashed to 128 bits; with disable_shuffling the key itself is used


def record_key(position: int, total: int) -> int:
    """Order-preserving example key: ``position`` scaled over the key space of ``total`` slots."""
    if not 0 <= position < max(total, 1):
        raise ValueError(f"record_key: position {position} outside [0, {total})")
    return int(position) * (_KEY_SPACE // max(int(total), 1))


def prepare(builder, manual_dir: Union[str, os.PathLike], *, overwrite: bool = False) -> str:
    """Build ``builder`` from ``manual_dir`` (no TensorFlow needed); returns the builder directory.

    The manual directory is checked first when the builder has ``check_manual_dir`` (all
    missing files in one error). An existing build is kept unless ``overwrite``.
    """
    import tensorflow_datasets as tfds

    if overwrite and builder.is_prepared():
        shutil.rmtree(builder.data_path)
    if not builder.is_prepared():
        if hasattr(builder, "check_manual_dir"):
            builder.check_manual_dir(manual_dir)
        config = tfds.download.DownloadConfig(manual_dir=os.fspath(Path(manual_dir).expanduser()))
        builder.download_and_prepare(download_config=config)
    return os.fspath(builder.data_path)


def build_parser(name: str, doc: str, *, manual_help: str, configs: Sequence[str], default_config: str,
                 config_help: Optional[str] = None, skip_help: str = "skip (and report) samples whose files are "
                 "corrupt or missing", manual_required: bool = False, help_layout: bool = False):
    """The argument parser every ``python -m data_pipelines.<name>.build`` starts from:
    --manual_dir, --data_dir, --config, --skip_corrupt, --overwrite, and with ``help_layout``
    --help_layout (print the expected download layout; see :func:`build_command`). Add
    dataset-specific flags to it."""
    import argparse

    parser = argparse.ArgumentParser(prog=f"python -m data_pipelines.{name}.build", description=doc.split("\n\n")[0])
    parser.add_argument("--manual_dir", required=manual_required, default=None, help=manual_help)
    parser.add_argument("--data_dir", default=None, help="tfds data dir (default $TFDS_DATA_DIR or "
                                                         "~/tensorflow_datasets)")
    parser.add_argument("--config", default=default_config, choices=list(configs), help=config_help)
    parser.add_argument("--skip_corrupt", action="store_true", help=skip_help)
    parser.add_argument("--overwrite", action="store_true", help="delete an existing build first")
    if help_layout:
        parser.add_argument("--help_layout", action="store_true", help="print the expected download layout")
    return parser


def build_and_report(builder, manual_dir: Union[str, os.PathLike], *, overwrite: bool = False,
                     skip_corrupt: bool = False) -> str:
    """What every ``python -m data_pipelines.<name>.build`` does: build (or reuse), then report.

    Prints the split sizes and build time to stderr, the skipped-file report (also written to
    ``<builder dir>/skipped_files.json``) when ``skip_corrupt``, and the builder directory to stdout.
    """
    import sys
    import time

    reused = builder.is_prepared() and not overwrite
    start = time.perf_counter()
    path = prepare(builder, manual_dir, overwrite=overwrite)
    counts = ", ".join(f"{name}: {split.num_examples}" for name, split in builder.info.splits.items())
    print(f"{builder.name}/{builder.builder_config.name} ({counts}) ready in {time.perf_counter() - start:.1f} s",
          file=sys.stderr)
    if reused:
        print(f"{path} already built (--overwrite rebuilds it)", file=sys.stderr)
    elif skip_corrupt:
        builder.policy.write_report(os.path.join(path, "skipped_files.json"))
        print(builder.policy.report(), file=sys.stderr)
    print(path)
    return path


def build_command(args, get_builder: Callable, *, instructions: Optional[str] = None, **builder_kwargs) -> str:
    """The body of a ``python -m data_pipelines.<name>.build`` main on parsed :func:`build_parser`
    ``args``: with ``--help_layout`` print ``instructions`` (the download layout) and return "";
    otherwise build ``get_builder(args.config, args.data_dir, skip_corrupt=args.skip_corrupt,
    **builder_kwargs)`` from ``--manual_dir`` and report (:func:`build_and_report`)."""
    if getattr(args, "help_layout", False):
        print(instructions)
        return ""
    builder = get_builder(args.config, args.data_dir, skip_corrupt=args.skip_corrupt, **builder_kwargs)
    return build_and_report(builder, args.manual_dir, overwrite=args.overwrite, skip_corrupt=args.skip_corrupt)


def run_command(main: Callable[[], Any]) -> None:
    """``if __name__ == "__main__"`` of a build command: a :class:`ManualDirError` or
    :class:`CorruptFileError` exits with ``error: <message>`` (status 1, no traceback)."""
    import sys

    try:
        main()
    except (ManualDirError, CorruptFileError) as err:
        sys.exit(f"error: {err}")


def get_named_builder(builder_cls, config: str, data_dir: Optional[str] = None, **kwargs):
    """``builder_cls`` of a config name (one of its ``BUILDER_CONFIGS``) under ``data_dir``
    (default :func:`default_data_dir`), kwargs to the builder (e.g. ``skip_corrupt``); an unknown
    name raises a ValueError listing the known ones."""
    names = [c.name for c in builder_cls.BUILDER_CONFIGS]
    if config not in names:
        raise ValueError(f"unknown {builder_cls.name} config {config!r}; known: {names}")
    return builder_cls(config=config, data_dir=data_dir or default_data_dir(), **kwargs)


def ensure_prepared(builder, manual_dir: Union[str, os.PathLike, None], instructions: str) -> str:
    """What a manual dataset's ``ensure_built`` does: the builder directory
    (``<data_dir>/<name>/<config>/<version>``), built from ``manual_dir`` when missing; a
    FileNotFoundError with the download ``instructions`` when neither exists. Skipped corrupt
    samples are reported on stderr."""
    import sys

    if builder.is_prepared():
        return os.fspath(builder.data_path)
    if not manual_dir:
        raise FileNotFoundError(f"{builder.name}/{builder.builder_config.name} is not built under {builder.data_dir}; "
                                f"give the raw download (data.manual_dir / --manual_dir) to build it."
                                f"\n\n{instructions}")
    path = prepare(builder, manual_dir)
    if builder.policy.count:
        print(builder.policy.report(), file=sys.stderr)
    return path
