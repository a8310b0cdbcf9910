"""Synthetic MANO files in the exact on-disk format of the official MANO_*.pkl.

The official files are protocol-2 pickles written by Python 2: strings are
Python-2 ``str`` (BINSTRING opcodes), arrays are pickled through
``numpy.core.multiarray._reconstruct``, ``J_regressor`` is a
``scipy.sparse.csc.csc_matrix``, most arrays are ``chumpy.ch.Ch`` objects
(array in state['x']) and ``shapedirs`` is a ``chumpy.reordering.Select``.
This writer emits those opcodes directly, so no chumpy or Python 2 is needed.
"""
from __future__ import annotations

import io
import pickle
import struct

import numpy as np


class Global:
    def __init__(self, module, name):
        self.module, self.name = module, name


class Py2Str(bytes):
    """A Python-2 byte string (BINSTRING), unpickled as str under encoding='latin1'."""


class NewObj:
    """An instance of a (Python-2) class, pickled as NEWOBJ + BUILD(state)."""

    def __init__(self, module, name, state):
        self.module, self.name, self.state = module, name, state


class Reduce:
    def __init__(self, func: Global, args: tuple):
        self.func, self.args = func, args


class _Py2Pickler(pickle._Pickler):
    def save(self, obj, save_persistent_id=True):
        w = self.write
        if isinstance(obj, Global):
            w(pickle.GLOBAL + obj.module.encode() + b"\n" + obj.name.encode() + b"\n")
        elif isinstance(obj, Py2Str):
            n = len(obj)
            w((pickle.SHORT_BINSTRING + bytes([n])) if n < 256 else (pickle.BINSTRING + struct.pack("<i", n)))
            w(bytes(obj))
        elif isinstance(obj, str):
            self.save(Py2Str(obj.encode("latin1")))
        elif isinstance(obj, NewObj):
            self.save(Global(obj.module, obj.name))
            w(pickle.EMPTY_TUPLE + pickle.NEWOBJ)
            self.save(obj.state)
            w(pickle.BUILD)
        elif isinstance(obj, Reduce):
            self.save(obj.func)
            self.save(obj.args)
            w(pickle.REDUCE)
        elif isinstance(obj, set):
            self.save(Reduce(Global("__builtin__", "set"), (sorted(obj),)))
        elif isinstance(obj, np.dtype):
            self.save(Reduce(Global("numpy", "dtype"), (Py2Str(obj.str[1:].encode()), 0, 1)))
            self.save((3, Py2Str(b"<" if obj.byteorder in "<=" else obj.byteorder.encode()), None, None, None, -1, -1, 0))
            w(pickle.BUILD)
        elif isinstance(obj, np.ndarray):
            arr = np.ascontiguousarray(obj)
            self.save(Reduce(Global("numpy.core.multiarray", "_reconstruct"),
                             (Global("numpy", "ndarray"), (0,), Py2Str(b"b"))))
            self.save((1, tuple(arr.shape), arr.dtype, False, Py2Str(arr.tobytes())))
            w(pickle.BUILD)
        else:
            super().save(obj, save_persistent_id)


def ch(arr):
    """A chumpy.ch.Ch holding ``arr`` (plus bookkeeping state like the real files)."""
    return NewObj("chumpy.ch", "Ch", {"x": np.asarray(arr), "_depends_on_deps": set(), "_cache": {}})


def csc(dense: np.ndarray):
    cols = [np.nonzero(dense[:, c])[0] for c in range(dense.shape[1])]
    indices = np.concatenate(cols).astype(np.int32)
    indptr = np.concatenate([[0], np.cumsum([len(c) for c in cols])]).astype(np.int32)
    data = np.concatenate([dense[c_rows, c] for c, c_rows in enumerate(cols)]).astype(np.float64)
    return NewObj("scipy.sparse.csc", "csc_matrix",
                  {"_shape": dense.shape, "data": data, "indices": indices, "indptr": indptr,
                   "maxprint": 50, "format": Py2Str(b"csc")})


def random_mano_arrays(seed: int = 0, num_verts: int = 778, num_faces: int = 1538) -> dict:
    """Random but well-conditioned MANO-shaped arrays (decoded form)."""
    rng = np.random.default_rng(seed)
    v_template = rng.normal(0, 0.04, (num_verts, 3))
    jreg = np.zeros((16, num_verts))
    for j in range(16):  # each joint: a convex combination of ~20 vertices
        ids = rng.choice(num_verts, 20, replace=False)
        jreg[j, ids] = rng.uniform(0.1, 1.0, 20)
    jreg /= jreg.sum(1, keepdims=True)
    weights = rng.dirichlet(np.full(16, 0.3), num_verts)
    kintree = np.array([[4294967295, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14], np.arange(16)], np.int64)
    comps = np.linalg.qr(rng.normal(size=(45, 45)))[0].T
    return {
        "v_template": v_template,
        "shapedirs": rng.normal(0, 0.005, (num_verts, 3, 10)),
        "posedirs": rng.normal(0, 0.005, (num_verts, 3, 135)),
        "J_regressor": jreg,
        "weights": weights,
        "kintree_table": kintree,
        "f": rng.integers(0, num_verts, (num_faces, 3)).astype(np.uint32),
        "hands_components": comps,
        "hands_coeffs": rng.normal(0, 0.5, (1554, 45)),
        "hands_mean": rng.normal(0, 0.2, 45),
        "J": jreg @ v_template,
    }


def write_official_mano_pkl(path, arrays: dict) -> None:
    """Write ``arrays`` in the official MANO pickle layout (chumpy + csc, Python-2 protocol 2)."""
    # The stored chumpy array has 20 shape directions; Select picks the first 10.
    extra = np.random.default_rng(123).normal(0, 0.01, arrays["shapedirs"].shape[:2] + (10,))
    full_shapedirs = np.concatenate([arrays["shapedirs"], extra], -1)
    idxs = np.arange(full_shapedirs.size).reshape(full_shapedirs.shape)[:, :, :10].ravel()
    data = {
        "f": np.asarray(arrays["f"], np.uint32),
        "J_regressor": csc(arrays["J_regressor"]),
        "kintree_table": np.asarray(arrays["kintree_table"], np.int64),
        "J": ch(arrays["J"]),
        "weights": ch(arrays["weights"]),
        "posedirs": np.asarray(arrays["posedirs"], np.float64),
        "bs_style": "lbs",
        "v_template": ch(arrays["v_template"]),
        "shapedirs": NewObj("chumpy.reordering", "Select",
                            {"a": ch(full_shapedirs), "idxs": idxs, "preferred_shape": (full_shapedirs.shape[0], 3, 10)}),
        "bs_type": "lrotmin",
        "hands_components": np.asarray(arrays["hands_components"]),
        "hands_coeffs": np.asarray(arrays["hands_coeffs"]),
        "hands_mean": np.asarray(arrays["hands_mean"]),
    }
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(data)
    with open(path, "wb") as f:
        f.write(buf.getvalue())


def write_plain_mano_pkl(path, arrays: dict) -> None:
    """Plain-numpy pickle (what smplx reads when chumpy is absent)."""
    keys = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f",
            "hands_components", "hands_mean", "J")
    with open(path, "wb") as f:
        pickle.dump({k: np.asarray(arrays[k]) for k in keys}, f, protocol=2)
