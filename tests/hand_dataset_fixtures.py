"""Tiny fixtures in the exact on-disk layout and formats of the FreiHAND and HO3D downloads.

Nothing licensed: random annotations of the right shapes/dtypes, tiny random images. HO3D
meta files are written as Python-2 pickles (``py2_pickle_dump``), the way the real ones
were produced (py2.7, numpy arrays, ``str`` keys stored as byte strings).
"""
from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

FREIHAND_KINDS = ("K", "mano", "xyz", "verts", "scale")


# ----------------------------------------------------------------------------- python-2 pickles
class _Py2Pickler(pickle._Pickler):
    """Protocol-2 pickler emitting Python-2 opcodes: str/bytes as (SHORT_)BINSTRING, numpy
    globals under their Python-2-era module ``numpy.core.multiarray``."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_string(self, data: bytes):
        n = len(data)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + data)
        else:
            self.write(pickle.BINSTRING + n.to_bytes(4, "little") + data)

    def save_bytes(self, obj):
        self._save_py2_string(obj)
        self.memoize(obj)

    def save_str(self, obj):
        try:
            data = obj.encode("latin1")
        except UnicodeEncodeError:
            return pickle._Pickler.save_str(self, obj)
        self._save_py2_string(data)
        self.memoize(obj)

    def save_global(self, obj, name=None):
        name = name or obj.__qualname__
        module = pickle.whichmodule(obj, name).replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode("ascii"))
        self.memoize(obj)

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str
    dispatch[type] = save_global


def py2_pickle_dump(obj, path):
    with open(path, "wb") as fh:
        _Py2Pickler(fh, protocol=2).dump(obj)


# ----------------------------------------------------------------------------- images
def jpeg_bytes(array: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def random_image(rng, size) -> np.ndarray:
    h, w = (size, size) if np.isscalar(size) else size
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def corrupt_file(path):
    """Truncate an image/annotation so that decoding fails."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: max(len(data) // 3, 8)])


# ----------------------------------------------------------------------------- FreiHAND
def _hand_points(rng, n, centre=(0.0, 0.0, 0.6), spread=0.05):
    return (np.asarray(centre) + rng.uniform(-spread, spread, (n, 3))).astype(np.float64)


def freihand_K(size: int) -> np.ndarray:
    return np.array([[2.0 * size, 0.0, size / 2.0], [0.0, 2.0 * size, size / 2.0], [0.0, 0.0, 1.0]])


def write_freihand(root, n_train: int = 3, n_eval: int = 2, size: int = 16, seed: int = 0) -> Dict[str, Dict]:
    """FreiHAND_pub_v2 (+ _eval) layout under ``root``; returns the annotations per split
    ('train'/'evaluation') as numpy arrays plus the written image bytes."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, prefix, n in (("train", "training", n_train), ("evaluation", "evaluation", n_eval)):
        K = np.stack([freihand_K(size) for _ in range(n)])
        K[:, 0, 0] += rng.uniform(-1, 1, n)
        xyz = np.stack([_hand_points(rng, 21) for _ in range(n)])
        verts = np.stack([_hand_points(rng, 778) for _ in range(n)])
        mano = rng.normal(0, 0.3, (n, 61))
        scale = rng.uniform(0.02, 0.04, n)
        lists = {"K": K.tolist(), "mano": [[m.tolist()] for m in mano], "xyz": xyz.tolist(),
                 "verts": verts.tolist(), "scale": scale.tolist()}
        for kind in FREIHAND_KINDS:
            (root / f"{prefix}_{kind}.json").write_text(json.dumps(lists[kind]))
        (root / prefix / "rgb").mkdir(parents=True, exist_ok=True)
        images = {}
        versions = 4 if split == "train" else 1
        for v in range(versions):
            for i in range(n):
                img_id = i + n * v
                images[img_id] = jpeg_bytes(random_image(rng, size))
                (root / prefix / "rgb" / f"{img_id:08d}.jpg").write_bytes(images[img_id])
        masks = {}
        if split == "train":
            (root / prefix / "mask").mkdir(parents=True, exist_ok=True)
            for i in range(n):
                m = np.zeros((size, size, 3), np.uint8)
                m[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 255
                masks[i] = m
                (root / prefix / "mask" / f"{i:08d}.jpg").write_bytes(jpeg_bytes(m, 98))
        out[split] = dict(K=K, xyz=xyz, verts=verts, mano=mano, scale=scale, images=images, masks=masks)
    return out


# ----------------------------------------------------------------------------- HO3D
OPENGL_FLIP = np.diag([1.0, -1.0, -1.0])


def ho3d_K(size) -> np.ndarray:
    h, w = size
    return np.array([[1.5 * w, 0.0, w / 2.0], [0.0, 1.5 * w, h / 2.0], [0.0, 0.0, 1.0]])


def write_ho3d(root, version: str = "v2", train: Optional[Dict[str, int]] = None,
               evaluation: Optional[Dict[str, int]] = None, size=(12, 16), eval_full_gt: bool = False,
               seed: int = 0) -> Dict[str, Dict]:
    """HO3D_v2 / HO3D_v3 layout under ``root``: ``{train,evaluation}/<SEQ>/{rgb,meta}``,
    ``train.txt`` / ``evaluation.txt`` ("SEQ/FID" lines; evaluation.txt deliberately not
    sorted). Meta pkls as in the download (OpenGL camera frame, metres). Returns per split a
    dict "SEQ/FID" -> meta dict (numpy) and the list of lines in file order."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    ext = "png" if version == "v2" else "jpg"
    train = train or {"ABF10": 3, "MC1": 2}
    evaluation = evaluation or {"SM1": 2, "AP10": 2}
    out = {}
    for split, seqs in (("train", train), ("evaluation", evaluation)):
        metas, lines = {}, []
        for seq, n in seqs.items():
            (root / split / seq / "rgb").mkdir(parents=True, exist_ok=True)
            (root / split / seq / "meta").mkdir(parents=True, exist_ok=True)
            for f in range(n):
                fid = f"{f:04d}"
                lines.append(f"{seq}/{fid}")
                img = random_image(rng, size)
                data = png_bytes(img) if ext == "png" else jpeg_bytes(img)
                (root / split / seq / "rgb" / f"{fid}.{ext}").write_bytes(data)
                meta = _ho3d_meta(rng, split, size, eval_full_gt)
                meta["_image"] = data
                metas[f"{seq}/{fid}"] = meta
                py2_pickle_dump({k: v for k, v in meta.items() if not k.startswith("_")},
                                root / split / seq / "meta" / f"{fid}.pkl")
        if split == "evaluation":
            lines = lines[::-1]  # the official order is the file's order, not sorted order
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
        out[split] = {"metas": metas, "lines": lines}
    return out


def _ho3d_meta(rng, split: str, size, eval_full_gt: bool) -> Dict:
    """One meta dict: camera-frame (OpenGL: hand at negative z) annotations."""
    joints_cv = _hand_points(rng, 21, centre=(0.0, 0.0, 0.5), spread=0.04)
    joints_gl = joints_cv @ OPENGL_FLIP
    K = ho3d_K(size)
    meta = {
        "camMat": K,
        "objRot": rng.normal(0, 0.5, (3, 1)),
        "objTrans": (np.array([0.0, 0.0, 0.55]) @ OPENGL_FLIP + rng.normal(0, 0.01, 3)),
        "objName": "003_cracker_box",
        "objLabel": 1,
        "objCorners3DRest": rng.normal(0, 0.05, (8, 3)),
        "objCorners3D": rng.normal(0, 0.05, (8, 3)),
    }
    if split == "train" or eval_full_gt:
        meta.update(handPose=rng.normal(0, 0.3, 48), handTrans=joints_gl[0] - rng.normal(0, 0.01, 3),
                    handBeta=rng.normal(0, 1, 10), handJoints3D=joints_gl)
    else:  # old evaluation release: root joint only, no MANO parameters
        meta.update(handPose=None, handTrans=None, handBeta=None, handJoints3D=joints_gl[0])
    if split == "evaluation":
        uv = (joints_cv @ K.T)[:, :2] / (joints_cv @ K.T)[:, 2:]
        lo, hi = uv.min(0), uv.max(0)
        meta["handBoundingBox"] = [float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])]
    return meta


def opengl_to_opencv_reference(points: np.ndarray) -> np.ndarray:
    """Independent reference of the HO3D axis change: negate y and z."""
    p = np.array(points, np.float64, copy=True)
    p[..., 1] *= -1
    p[..., 2] *= -1
    return p


def lines_of(path) -> List[str]:
    return [l.strip() for l in Path(path).read_text().splitlines() if l.strip()]


# ----------------------------------------------------------------------------- eval configs end to end
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, arg: Optional[str] = None):
    """``configs/<name>.py``'s get_config(arg)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"cfg_{name}", os.path.join(REPO_ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def save_random_tempclr_model(cfg, directory, seed: int = 0) -> None:
    """A randomly initialised TempCLR model of ``cfg`` as a model-only checkpoint, filled from
    numpy (LeCun-normal kernels, identity batch norm, TempCLR's default x0) instead of the
    slow eager initialisation."""
    import jax
    from flax import nnx

    from handjax.models.tempclr import default_mean_param
    from handjax.models.checkpoint import save_model
    from handjax.train.tempclr import build_model

    graphdef, state = nnx.split(nnx.eval_shape(lambda: build_model(cfg, with_projection=False, seed=seed)))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        key = path[-1].key
        if key == "kernel":
            return rng.normal(0.0, 1.0 / np.sqrt(np.prod(leaf.shape[:-1])), leaf.shape).astype(leaf.dtype)
        if key == "mean_param":
            return np.asarray(default_mean_param(), leaf.dtype).reshape(leaf.shape)
        return (np.ones if key in ("scale", "var") else np.zeros)(leaf.shape, leaf.dtype)

    pure = jax.tree_util.tree_map_with_path(fill, nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, pure)
    save_model(nnx.merge(graphdef, state), os.fspath(directory), {"system": "tempclr", "backbone": str(cfg.model.backbone)})


def run_main(args: Sequence[str], timeout: int = 300) -> str:
    """``python -m handjax.main ARGS`` on 8 forced CPU devices; returns stdout (asserts success)."""
    import subprocess
    import sys

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "handjax.main", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout
