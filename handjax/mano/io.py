"""Loading MANO model files without chumpy, safely.

The official ``MANO_RIGHT.pkl`` / ``MANO_LEFT.pkl`` are Python-2 pickles that
reference chumpy and scipy classes. They are read here with a restricted
unpickler: an allow-list maps exactly the globals the official files use to
inert stand-ins (chumpy ``Ch`` and ``Select``, scipy ``csc_matrix``) or to
numpy's array reconstruction; any other global (``os.system``...) is refused
with an error naming it, before anything is called.
"""
from __future__ import annotations

import os
import pickle
from typing import Optional

import numpy as np

from handjax.mano.model import ManoModel, model_from_arrays, model_to_arrays

MANO_DOWNLOAD_HINT = (
    "MANO is licensed and not shipped with handjax: register at https://mano.is.tue.mpg.de, download "
    "'Models & Code' (mano_v1_2.zip) and point the config key `mano.model_path` (or the function argument "
    "`path`) at mano_v1_2/models/MANO_RIGHT.pkl, MANO_LEFT.pkl or their folder. Leave `mano.model_path` "
    "empty to use handjax's built-in licence-free hand model."
)


class _PickledState:
    """Inert stand-in for a pickled object: records its state, runs nothing."""

    def __init__(self, *args):
        self._args = args
        self.state = None

    def __setstate__(self, state):
        self.state = state


class _ChumpyCh(_PickledState):
    """chumpy.ch.Ch: the array lives in state['x']."""

    def array(self) -> np.ndarray:
        if not isinstance(self.state, dict) or "x" not in self.state:
            raise pickle.UnpicklingError("chumpy.ch.Ch object without an 'x' array in its state")
        return np.asarray(_decode(self.state["x"]))


class _ChumpySelect(_PickledState):
    """chumpy.reordering.Select: a.x.ravel()[idxs].reshape(preferred_shape)."""

    def array(self) -> np.ndarray:
        st = self.state
        if not isinstance(st, dict) or not {"a", "idxs"} <= set(st):
            raise pickle.UnpicklingError("chumpy.reordering.Select object without 'a'/'idxs' in its state")
        base = np.asarray(_decode(st["a"])).ravel()
        out = base[np.asarray(st["idxs"]).ravel()]
        shape = st.get("preferred_shape")
        return out.reshape(tuple(shape)) if shape is not None else out


class _CscMatrix(_PickledState):
    """scipy.sparse.csc_matrix rebuilt as a dense array from data/indices/indptr/shape."""

    def array(self) -> np.ndarray:
        st = self.state
        shape = st.get("_shape", st.get("shape")) if isinstance(st, dict) else None
        if shape is None or not {"data", "indices", "indptr"} <= set(st):
            raise pickle.UnpicklingError("scipy csc_matrix state lacks data/indices/indptr/shape")
        data, indices, indptr = (np.asarray(st[k]) for k in ("data", "indices", "indptr"))
        n_rows, n_cols = (int(s) for s in shape)
        if indptr.shape != (n_cols + 1,):
            raise pickle.UnpicklingError(f"csc_matrix indptr has shape {indptr.shape}, expected ({n_cols + 1},)")
        dense = np.zeros((n_rows, n_cols), dtype=data.dtype)
        cols = np.repeat(np.arange(n_cols), np.diff(indptr))
        np.add.at(dense, (indices, cols), data)
        return dense


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("__builtin__", "set"): lambda: set,
    ("builtins", "set"): lambda: set,
    ("scipy.sparse.csc", "csc_matrix"): lambda: _CscMatrix,
    ("scipy.sparse._csc", "csc_matrix"): lambda: _CscMatrix,
    ("chumpy.ch", "Ch"): lambda: _ChumpyCh,
    ("chumpy.reordering", "Select"): lambda: _ChumpySelect,
}


class RestrictedMANOUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals of the official MANO files."""

    def __init__(self, file, source: str = "<pickle>"):
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module, name):
        factory = _ALLOWED.get((module, name))
        if factory is None:
            raise pickle.UnpicklingError(
                f"{self._source}: refusing to load global '{module}.{name}': MANO files may only reference "
                f"{sorted(f'{m}.{n}' for m, n in _ALLOWED)}")
        return factory()


def _decode(value):
    """Turn chumpy/scipy stand-ins into numpy arrays; leave everything else as is."""
    if isinstance(value, (_ChumpyCh, _ChumpySelect, _CscMatrix)):
        return value.array()
    return value


def load_mano_pickle(path: str) -> dict:
    """Read a MANO pickle (official chumpy format or plain numpy) into a dict of numpy arrays."""
    with open(path, "rb") as f:
        try:
            raw = RestrictedMANOUnpickler(f, source=path).load()
        except pickle.UnpicklingError as e:
            if str(e).startswith(f"{path}:"):  # a refused global, already naming the file
                raise
            # random bytes ("invalid load key"), a truncated file ("pickle data was truncated")
            raise pickle.UnpicklingError(f"{path}: not a readable MANO pickle ({e}); re-download it "
                                         f"(see https://mano.is.tue.mpg.de)") from e
        except Exception as e:  # truncated or corrupt file
            raise pickle.UnpicklingError(f"{path}: not a readable MANO pickle ({type(e).__name__}: {e})") from e
    if not isinstance(raw, dict):
        raise pickle.UnpicklingError(f"{path}: expected a dict at the top level, got {type(raw).__name__}")
    return {str(k): _decode(v) for k, v in raw.items()}


def save_npz(model: ManoModel, path: str) -> None:
    """Export a model to a plain .npz (fast reload; keeps the official key names)."""
    arrays = model_to_arrays(model)
    np.savez(path, side=np.array(model.side), **arrays)


def load_npz(path: str, num_betas: int = 10) -> ManoModel:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    side = str(arrays.pop("side", "right"))
    return model_from_arrays(arrays, side=side, num_betas=num_betas, source=path)


def _resolve_path(path: str, side: str) -> str:
    if os.path.isdir(path):
        path = os.path.join(path, f"MANO_{side.upper()}.pkl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MANO model file not found: {path}. {MANO_DOWNLOAD_HINT}")
    return path


def load_model(path: Optional[str] = None, side: str = "right", *, num_betas: int = 10,
               fix_left_shapedirs: bool = False) -> ManoModel:
    """Load MANO from ``path`` (.pkl, .npz, or a folder holding MANO_{RIGHT,LEFT}.pkl).

    With ``path`` None or empty, the built-in licence-free hand model is used.
    ``fix_left_shapedirs`` applies the known fix for the official left model
    (its shapedirs x-component has the wrong sign; vchoutas/smplx#48) and is
    rejected for right hands. Datasets differ: InterHand2.6M applies the fix,
    DexYCB annotations were made without it.
    """
    if not path:
        from handjax.mano.builtin import builtin_mano_arrays
        arrays, source = builtin_mano_arrays(side), f"<built-in {side} hand>"
    else:
        path = _resolve_path(os.fspath(path), side)
        if path.endswith(".npz"):
            model = load_npz(path, num_betas)
            if model.side != side:
                raise ValueError(f"{path}: holds a {model.side} hand, {side} was asked for")
            return apply_left_shapedirs_fix(model) if fix_left_shapedirs else model
        arrays, source = load_mano_pickle(path), path
    model = model_from_arrays(arrays, side=side, num_betas=num_betas, source=source)
    return apply_left_shapedirs_fix(model) if fix_left_shapedirs else model


def apply_left_shapedirs_fix(model: ManoModel) -> ManoModel:
    """shapedirs[:, 0, :] *= -1 for a left model (vchoutas/smplx#48)."""
    if model.side != "left":
        raise ValueError("the shapedirs fix applies to left-hand models only")
    return model.replace(shapedirs=model.shapedirs.at[:, 0, :].multiply(-1.0))
