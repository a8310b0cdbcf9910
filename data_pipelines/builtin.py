"""Shared machinery of the built-in (rendered) tfds datasets: ``synthetic_hands``,
``two_hands``, ``hand_object`` and ``identities``.

Each of them declares only what is its own (its config dataclass, base configs and
overridable sizes, features, scene sampling, rendering and frame encoding); this module does
the rest the same way for all:

Configs
    :func:`derive_config`: a base config plus integer size overrides, with a derived name
    (``default_n50_s96``) so each size is built in its own directory; :class:`SequencesConfig`
    and ``SEQUENCE_SIZES`` / ``SEQUENCE_SHORT`` / ``SEQUENCE_MINIMUM``: the sizes of a dataset
    of train and test sequences (all but ``identities``, which counts subjects).
Builders
    :class:`RenderedBuilder`: the tfds builder (ArrayRecord, no shuffling: one record per
    frame, sequences contiguous, the record layout in ``info.metadata['index'][split]``);
    :func:`get_builder` / :func:`ensure_built`; :func:`run_build_cli`, the
    ``python -m data_pipelines.<name>.build`` command line.
Rendering
    :func:`render_sequences`: the batched driver. Batches hold whole sequences, the last one
    padded by repeating its last frame (:func:`stack_sequences`) so the renderer compiles
    once, and each batch is dispatched before the previous one is read back
    (:func:`render_ahead`), so rendering overlaps encoding and writing.
Encoding
    :func:`png_bytes`, :func:`mask_png`; the single-hand features :func:`hand_features` and
    :func:`encode_hand`.
Record layout
    :func:`split_sequences`, :func:`annotated_flags`, :func:`split_index`,
    :func:`sequence_index`.

Reading a built dataset needs none of this (``tfds.builder_from_directory``).
"""
from __future__ import annotations

import abc
import argparse
import dataclasses
import io
import os
import shutil
import sys
import time
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from data_pipelines.manual import default_data_dir

__all__ = [
    "SEQUENCE_MINIMUM", "SEQUENCE_SHORT", "SEQUENCE_SIZES", "SPLITS", "RenderedBuilder", "SequencesConfig", "add_sensor_noise", "default_data_dir", "derive_config", "encode_hand",
    "ensure_built", "get_builder", "hand_features", "mask_png", "png_bytes", "render_ahead", "render_sequences",
    "run_build_cli", "sequence_index", "stack_sequences",
]

SPLITS = ("train", "test")


# ----------------------------------------------------------------------------- configs
@dataclasses.dataclass
class SequencesConfig(tfds.core.BuilderConfig):
    """Sizes of a dataset of ``num_sequences`` train and ``test_sequences`` test sequences of
    ``frames`` frames at ``image_size`` (test ids follow the train ids); frames 0, k, 2k, ...
    and the last are ``annotated`` (k = ``annotate_every``); ``render_batch`` frames (whole
    sequences, at least one) are rendered per jitted call."""

    num_sequences: int = 8
    test_sequences: int = 4
    frames: int = 4
    image_size: int = 64
    seed: int = 0
    annotate_every: int = 2
    render_batch: int = 64


SEQUENCE_SIZES = ("num_sequences", "test_sequences", "frames", "image_size", "seed", "annotate_every")
SEQUENCE_SHORT = {"num_sequences": "n", "test_sequences": "nt", "frames": "t", "image_size": "s", "seed": "seed",
                  "annotate_every": "k"}  # config-name abbreviations of SEQUENCE_SIZES
SEQUENCE_MINIMUM = {"seed": 0, "test_sequences": 0}  # smallest values (the other sizes: 1)


def derive_config(dataset: str, base_configs: Mapping, base: str, overridable: Sequence[str],
                  short: Mapping[str, str], minimum: Mapping[str, int], overrides: Mapping,
                  check: Optional[Callable[[Dict[str, int]], None]] = None):
    """A config from a base config name plus integer overrides (None values ignored).

    With overrides that change something the config gets a derived name, the base name plus
    ``_<short><value>`` per changed key in ``overridable`` order (e.g. ``default_n50_s96``), so
    each size has its own directory. Unknown config names or keys and values below their
    minimum (``minimum[key]``, default 1) raise a ValueError; ``check(changes)`` may raise more.
    """
    if base not in base_configs:
        raise ValueError(f"unknown {dataset} config {base!r}; known: {sorted(base_configs)}")
    unknown = sorted(set(overrides) - set(overridable))
    if unknown:
        raise ValueError(f"{dataset} make_config: unknown override(s) {unknown}; allowed: {list(overridable)}")
    cfg = base_configs[base]
    changes = {k: int(v) for k, v in overrides.items() if v is not None and int(v) != getattr(cfg, k)}
    if not changes:
        return cfg
    for key, value in changes.items():
        if value < minimum.get(key, 1):
            raise ValueError(f"{dataset} make_config: {key} must be >= {minimum.get(key, 1)}, got {value}")
    if check is not None:
        check(changes)
    name = base + "".join(f"_{short[k]}{changes[k]}" for k in overridable if k in changes)
    return dataclasses.replace(cfg, name=name, description=f"{base} with {changes}", **changes)


def annotated_flags(frames: int, every: int) -> np.ndarray:
    """(frames,) bool: frames 0, every, 2*every, ... and the last frame are annotated
    (the handobjectconsist rule for sparse supervision). every <= 1 annotates all frames."""
    t = np.arange(frames)
    if every <= 1:
        return np.ones(frames, bool)
    flags = t % every == 0
    flags[-1] = True
    return flags


def split_sequences(cfg, split: str) -> Tuple[int, int]:
    """(number of sequences, first sequence_id) of a split of a config with ``num_sequences``
    (train) and ``test_sequences`` (test): test ids follow the train ids."""
    if split == "train":
        return cfg.num_sequences, 0
    if split == "test":
        return cfg.test_sequences, cfg.num_sequences
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def split_index(cfg: SequencesConfig, split: str) -> Dict[str, List]:
    """Record layout of a split of a :class:`SequencesConfig` dataset: lists sequence_id /
    frame_index / annotated in record order."""
    n, first = split_sequences(cfg, split)
    return sequence_index(n, first, cfg.frames, annotated_flags(cfg.frames, cfg.annotate_every))


def sequence_index(num_sequences: int, first_id: int, frames: int, annotated: np.ndarray) -> Dict[str, List]:
    """Record layout of a split of ``num_sequences`` sequences of ``frames`` frames with ids
    from ``first_id``: lists sequence_id / frame_index / annotated in record order
    (``annotated``: (frames,) bool flags of one sequence)."""
    return {
        "sequence_id": np.repeat(np.arange(first_id, first_id + num_sequences), frames).tolist(),
        "frame_index": np.tile(np.arange(frames), num_sequences).tolist(),
        "annotated": np.tile(annotated, num_sequences).tolist(),
    }


# ----------------------------------------------------------------------------- encoding
def png_bytes(array: np.ndarray) -> bytes:
    """Lossless PNG of an (H, W, 3) or (H, W, 1) uint8 array."""
    if array.dtype != np.uint8:
        raise ValueError(f"png_bytes: expected uint8, got {array.dtype}")
    img = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def mask_png(mask: np.ndarray) -> bytes:
    """PNG of an (H, W) boolean mask as an (H, W, 1) uint8 image: 255 inside, 0 outside."""
    return png_bytes((np.asarray(mask, bool).astype(np.uint8) * 255)[..., None])


def hand_features(size: int) -> tfds.features.FeaturesDict:
    """The features of a single-hand frame at ``size`` x ``size`` (``synthetic_hands``' table;
    ``hand_object`` and ``identities`` add theirs to these)."""
    f32 = np.float32
    tensor = tfds.features.Tensor
    return tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
        "mask": tfds.features.Image(shape=(size, size, 1), encoding_format="png"),
        "part_seg": tfds.features.Image(shape=(size, size, 1), encoding_format="png"),
        "joints2d": tensor(shape=(21, 2), dtype=f32),
        "joints3d": tensor(shape=(21, 3), dtype=f32),
        "vertices": tensor(shape=(778, 3), dtype=f32),
        "mano_pose": tensor(shape=(48,), dtype=f32),
        "betas": tensor(shape=(10,), dtype=f32),
        "transl": tensor(shape=(3,), dtype=f32),
        "K": tensor(shape=(3, 3), dtype=f32),
        "is_right": tensor(shape=(), dtype=np.bool_),
        "sequence_id": tensor(shape=(), dtype=np.int64),
        "frame_index": tensor(shape=(), dtype=np.int64),
        "annotated": tensor(shape=(), dtype=np.bool_),
    })


def encode_hand(frame: Dict[str, np.ndarray]) -> Dict:
    """Single-hand frame arrays -> tfds example of :func:`hand_features` (PNG bytes for the
    image, the boolean ``mask`` and the ``part_seg`` labels)."""
    example = {k: frame[k] for k in ("joints2d", "joints3d", "vertices", "mano_pose", "betas", "transl", "K")}
    example["image"] = png_bytes(frame["image"])
    example["mask"] = mask_png(frame["mask"])
    example["part_seg"] = png_bytes(frame["part_seg"][..., None])
    example["is_right"] = bool(frame["is_right"])
    example["sequence_id"] = int(frame["sequence_id"])
    example["frame_index"] = int(frame["frame_index"])
    example["annotated"] = bool(frame["annotated"])
    return example


# ----------------------------------------------------------------------------- builders
class RenderedBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """tfds builder of a rendered dataset; a dataset's ``Builder`` subclasses it and declares
    ``VERSION``, ``RELEASE_NOTES``, ``BUILDER_CONFIGS``, ``OVERRIDABLE`` (recorded in
    ``info.metadata['generator']``), ``GENERATE`` (its frame-generation module),
    ``pkg_dir_path`` and the methods :meth:`features` and :meth:`encode` (plus, where the
    default does not fit, :meth:`split_index`, :meth:`render_frames` and :meth:`extra_metadata`). The dataset description is the docstring of the subclass's module.

    ArrayRecord files, splits ``train`` and ``test``, shuffling disabled (records in key order:
    one record per frame, a sequence's frames contiguous).
    """

    DEFAULT_CONFIG_NAME = "default"
    OVERRIDABLE: Tuple[str, ...] = ()
    GENERATE: str = ""  # module with render_split(cfg, split) -> (key, frame) iterator, e.g. "<package>.generate"

    def __init__(self, *, file_format=None, **kwargs):
        super().__init__(file_format=file_format or "array_record", **kwargs)

    # ------------------------------------------------------------------ declared by each dataset
    @abc.abstractmethod
    def features(self, cfg) -> tfds.features.FeaturesDict:
        """The features of config ``cfg``."""

    def split_index(self, cfg, split: str) -> Dict[str, List]:
        """Record layout of a split (sequence_id / frame_index / annotated lists, record order);
        by default that of a :class:`SequencesConfig`."""
        return split_index(cfg, split)

    def render_frames(self, split: str) -> Iterator[Tuple[int, Dict[str, np.ndarray]]]:
        """``(key, frame arrays)`` of every frame of ``split`` in record order: by default
        ``render_split(cfg, split)`` of the module named by ``GENERATE``, imported only when
        building (it imports jax; reading a built dataset needs none)."""
        import importlib

        return importlib.import_module(self.GENERATE).render_split(self.builder_config, split)

    @abc.abstractmethod
    def encode(self, frame: Dict[str, np.ndarray]) -> Dict:
        """Frame arrays -> tfds example."""

    def extra_metadata(self, cfg) -> Dict:
        """Dataset-specific ``info.metadata`` entries (besides generator and index)."""
        return {}

    # ------------------------------------------------------------------ shared
    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        metadata = tfds.core.MetadataDict(
            generator={k: getattr(cfg, k) for k in ("name",) + tuple(self.OVERRIDABLE)},
            index={split: self.split_index(cfg, split) for split in SPLITS},
            **self.extra_metadata(cfg),
        )
        return self.dataset_info_from_configs(description=sys.modules[type(self).__module__].__doc__,
                                              features=self.features(cfg), disable_shuffling=True,
                                              metadata=metadata)

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split: str) -> Iterator[Tuple[int, Dict]]:
        from handjax.distributed import check_preemption  # SIGTERM: abandon the build (tfds removes it)

        for key, frame in self.render_frames(split):
            check_preemption(f"building {self.name}/{self.builder_config.name}")
            yield key, self.encode(frame)


def get_builder(builder_cls, make_config: Callable, config, data_dir: Optional[str], overrides: Mapping):
    """``builder_cls`` for a config name (+ size overrides through ``make_config``) or a
    config object, under ``data_dir`` (default :func:`default_data_dir`)."""
    if isinstance(config, str):
        config = make_config(config, **overrides)
    elif overrides:
        raise ValueError(f"{builder_cls.name} get_builder: give overrides with a config name, not a config object")
    return builder_cls(config=config, data_dir=data_dir or default_data_dir())


def ensure_built(builder) -> str:
    """Build ``builder`` unless it is prepared; return its directory
    (``<data_dir>/<name>/<config>/<version>``, for ``tfds.builder_from_directory``)."""
    if not builder.is_prepared():
        builder.download_and_prepare()
    return os.fspath(builder.data_path)


def run_build_cli(name: str, doc: str, base_configs: Mapping, overridable: Sequence[str], get_builder_fn: Callable,
                  argv: Optional[Sequence[str]] = None) -> str:
    """``python -m data_pipelines.<name>.build``: --config (a base config), --data_dir, one
    integer flag per overridable size, --overwrite. Builds (or reuses) the config, reports
    the split sizes and time on stderr and prints the builder directory on the last line.
    Invalid sizes exit with the message (no traceback)."""
    prog = f"python -m data_pipelines.{name}.build"
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    parser.add_argument("--config", default="default", choices=sorted(base_configs))
    parser.add_argument("--data_dir", default=None, help="tfds data dir (default $TFDS_DATA_DIR or "
                                                         "~/tensorflow_datasets)")
    for key in overridable:
        parser.add_argument(f"--{key}", type=int, default=None, help=f"override the config's {key}")
    parser.add_argument("--overwrite", action="store_true", help="delete an existing build first")
    args = parser.parse_args(argv)
    try:
        builder = get_builder_fn(args.config, args.data_dir, **{k: getattr(args, k) for k in overridable})
    except ValueError as err:
        raise SystemExit(f"{prog}: {err}") from None
    reused = builder.is_prepared() and not args.overwrite
    if args.overwrite and builder.is_prepared():
        shutil.rmtree(builder.data_path)
    start = time.perf_counter()
    path = ensure_built(builder)
    counts = ", ".join(f"{split}: {info.num_examples} frames" for split, info in builder.info.splits.items())
    print(f"{name}/{builder.builder_config.name} ({counts}) ready in {time.perf_counter() - start:.1f} s"
          + (" (already built; --overwrite rebuilds it)" if reused else ""), file=sys.stderr)
    print(path)
    return path


# ----------------------------------------------------------------------------- rendering
def add_sensor_noise(seq: Dict[str, np.ndarray], rng: np.random.Generator, shape: Tuple[int, ...]
                     ) -> Dict[str, np.ndarray]:
    """``seq['noise']``: float32 Gaussian image noise of ``shape`` (T, H, W, 3) scaled by
    ``seq['noise_std']``, drawn from ``rng`` after the scene parameters; returns ``seq``."""
    seq["noise"] = (rng.standard_normal(shape) * seq["noise_std"]).astype(np.float32)
    return seq


def stack_sequences(seqs: List[Dict[str, np.ndarray]], per_frame: Sequence[str], per_sequence: Sequence[str],
                    frames: int, batch: int) -> Dict[str, np.ndarray]:
    """Per-frame arrays (batch, ...) of whole sequences: per-frame entries (T, ...)
    concatenated, per-sequence entries repeated ``frames`` times, padded to ``batch`` by
    repeating the last frame."""
    out = {k: np.concatenate([s[k] for s in seqs]) for k in per_frame}
    for key in per_sequence:
        out[key] = np.concatenate([np.repeat(np.asarray(s[key])[None], frames, axis=0) for s in seqs])
    n = len(seqs) * frames
    if n < batch:
        out = {k: np.concatenate([v, np.repeat(v[-1:], batch - n, axis=0)]) for k, v in out.items()}
    return out


def render_ahead(jobs: Iterable[Tuple[object, Dict[str, np.ndarray]]],
                 render: Callable[[Dict[str, np.ndarray]], Dict]) -> Iterator[Tuple[object, Dict, Dict]]:
    """For each ``(meta, scene)`` job yield ``(meta, scene, rendered)`` with ``rendered`` as
    numpy arrays; batch i + 1 is dispatched (JAX runs asynchronously) before batch i is read
    back, so rendering overlaps the caller's encoding and writing."""
    pending = None
    for meta, scene in jobs:
        job = (meta, scene, render(scene))
        if pending is not None:
            yield pending[0], pending[1], {k: np.asarray(v) for k, v in pending[2].items()}
        pending = job
    if pending is not None:
        yield pending[0], pending[1], {k: np.asarray(v) for k, v in pending[2].items()}


def render_sequences(cfg, split: str, *, dataset: str, sequences: Tuple[int, int],
                     sample: Callable[[int], Dict[str, np.ndarray]], per_frame: Sequence[str],
                     per_sequence: Sequence[str], not_rendered: Sequence[str], labels: Sequence[str],
                     render: Callable[[Dict[str, np.ndarray]], Dict],
                     finish: Optional[Callable[[Dict[str, np.ndarray]], Dict]] = None
                     ) -> Iterator[Tuple[int, Dict[str, np.ndarray]]]:
    """Yield ``(key, frame)`` for every frame of ``split`` in record order (key = local
    sequence number * cfg.frames + frame index).

    sequences: (number of sequences, first sequence_id) of the split; sample(number): the
    scene of sequence ``number``, per-frame entries (T, ...) named in ``per_frame`` and
    per-sequence ones in ``per_sequence``; batches of ``cfg.render_batch // cfg.frames``
    (at least 1) sequences are stacked and ``render(scene without not_rendered)`` renders
    them (arrays (B, ...)). A frame holds the rendered arrays, the scene entries ``labels``,
    ``mano_pose`` (= scene ``pose``), ``sequence_id`` and ``frame_index``, then whatever
    ``finish(frame)`` returns (labels derived from the others).
    """
    n_seq, first_id = sequences
    per_batch = max(1, cfg.render_batch // cfg.frames)
    batch = per_batch * cfg.frames

    def jobs():
        for start in range(0, n_seq, per_batch):
            numbers = range(start, min(start + per_batch, n_seq))
            yield numbers, stack_sequences([sample(i) for i in numbers], per_frame, per_sequence, cfg.frames, batch)

    def render_inputs(scene):
        return render({k: v for k, v in scene.items() if k not in not_rendered})

    bar = _progress(n_seq * cfg.frames, f"rendering {dataset}/{cfg.name}/{split}")
    for numbers, scene, rendered in render_ahead(jobs(), render_inputs):
        for s, number in enumerate(numbers):
            for t in range(cfg.frames):
                i = s * cfg.frames + t
                frame = {k: v[i] for k, v in rendered.items()}
                frame.update({k: scene[k][i] for k in labels})
                frame.update(mano_pose=scene["pose"][i], sequence_id=first_id + number, frame_index=t)
                if finish is not None:
                    frame.update(finish(frame))
                yield number * cfg.frames + t, frame
        bar.update(len(numbers) * cfg.frames)
    bar.close()


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=" frames", leave=False)
