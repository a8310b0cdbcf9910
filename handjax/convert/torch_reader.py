"""Read ``torch.save`` checkpoints into numpy without importing torch.

Supported container formats
---------------------------
* **zip** (PyTorch >= 1.6, the default): a zip archive with one top-level folder
  ``<name>/`` holding ``data.pkl`` (the pickled object), ``data/<key>`` (one raw
  record per storage), ``byteorder`` (``little``/``big``; absent in old files,
  which are little-endian) and ``version`` / ``.data/version``. Storages are
  referenced from the pickle by persistent ids
  ``('storage', storage_type, key, location, numel)``.
* **legacy** (PyTorch < 1.6, or ``_use_new_zipfile_serialization=False``): a
  stream of pickles: magic number, protocol version (1001), ``sys_info``, the
  main object, the list of storage keys, then for each key in that order an
  8-byte little-endian element count followed by the raw little-endian data.
  Persistent ids are ``('storage', storage_type, root_key, location, numel,
  view_metadata)`` and ``('module', cls, source_file, source)`` for pickled
  ``nn.Module`` classes.
* The pre-0.4 **tar** format is not supported (a clear error is raised).

Tensors become numpy arrays with the tensor's dtype, shape, strides and storage
offset applied (``as_strided`` on the storage, then copied to a contiguous
array). fp16 stays ``float16``; bfloat16 (no numpy dtype) is decoded to
``float32`` by shifting its 16 bits into the high half of a float32; float8
types become ``ml_dtypes`` arrays.

Safety
------
The unpickler is restricted: ``find_class`` resolves only an allow-list
(tensor/storage rebuild functions, torch dtypes and storage types,
``collections.OrderedDict``, numpy array/scalar/dtype reconstruction and a few
builtins containers). Every other global (optimizer/scheduler classes,
``argparse.Namespace``, custom classes, ``os.system``, ``builtins.eval``, ...)
is replaced by an :class:`InertObject` subclass that records its name and the
arguments/state it was given and never calls anything. Placeholders are listed
in the returned :class:`LoadReport` and in a :class:`PlaceholderWarning`.
``torch.device`` is decoded to its string form (``'cuda:0'``).
"""
from __future__ import annotations

import _compat_pickle
import collections
import io
import os
import pickle
import tarfile
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
ZIP_LOCAL_HEADER = b"PK\x03\x04"  # every zip archive (torch.save's default format) starts with it
LEGACY_PROTOCOL_VERSION = 1001


class CheckpointFormatError(ValueError):
    """The file is not a readable ``torch.save`` checkpoint (message names the file)."""


class PlaceholderWarning(UserWarning):
    """Non-allowed globals in a checkpoint were replaced by inert placeholders."""


# ----------------------------------------------------------------------------
# dtypes and storages
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TorchDtype:
    """A torch dtype as seen in a checkpoint.

    name: torch name (``'float32'``); itemsize: bytes per element;
    storage_code: numpy type code of the raw element ('' = ml_dtypes type, see
    ``ml_name``); bfloat16 is stored as ``'u2'`` and decoded to float32.
    """

    name: str
    itemsize: int
    storage_code: str
    ml_name: str = ""

    def storage_numpy_dtype(self, byteorder: str) -> np.dtype:
        """numpy dtype of the raw elements in a storage of the given byte order."""
        if self.ml_name:
            import ml_dtypes  # a jax dependency; no torch needed

            return np.dtype(getattr(ml_dtypes, self.ml_name))
        dt = np.dtype(self.storage_code)
        if dt.itemsize == 1:
            return dt
        return dt.newbyteorder("<" if byteorder == "little" else ">")


_DTYPES = {
    d.name: d
    for d in [
        TorchDtype("float32", 4, "f4"),
        TorchDtype("float64", 8, "f8"),
        TorchDtype("float16", 2, "f2"),
        TorchDtype("bfloat16", 2, "u2"),
        TorchDtype("complex64", 8, "c8"),
        TorchDtype("complex128", 16, "c16"),
        TorchDtype("int8", 1, "i1"),
        TorchDtype("uint8", 1, "u1"),
        TorchDtype("int16", 2, "i2"),
        TorchDtype("int32", 4, "i4"),
        TorchDtype("int64", 8, "i8"),
        TorchDtype("uint16", 2, "u2"),
        TorchDtype("uint32", 4, "u4"),
        TorchDtype("uint64", 8, "u8"),
        TorchDtype("bool", 1, "u1"),
        TorchDtype("float8_e4m3fn", 1, "", "float8_e4m3fn"),
        TorchDtype("float8_e5m2", 1, "", "float8_e5m2"),
        TorchDtype("float8_e4m3fnuz", 1, "", "float8_e4m3fnuz"),
        TorchDtype("float8_e5m2fnuz", 1, "", "float8_e5m2fnuz"),
    ]
}
_DTYPE_ALIASES = {
    "float": "float32", "double": "float64", "half": "float16", "cfloat": "complex64",
    "cdouble": "complex128", "short": "int16", "int": "int32", "long": "int64",
}

# torch.<Name>Storage -> element dtype (legacy typed storages).
_STORAGE_TYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128", "CharStorage": "int8", "ByteStorage": "uint8",
    "ShortStorage": "int16", "IntStorage": "int32", "LongStorage": "int64",
    "BoolStorage": "bool", "UntypedStorage": "uint8",
}


@dataclass(frozen=True)
class StorageType:
    """Marker for a ``torch.<X>Storage`` class referenced by a persistent id."""

    name: str
    dtype: TorchDtype


@dataclass(frozen=True)
class TensorType:
    """Marker for ``torch.Tensor`` / ``torch.nn.Parameter`` class references."""

    name: str


@dataclass(eq=False)
class TorchStorage:
    """One storage: ``data`` holds its raw bytes (uint8, ``nbytes`` long).

    ``data`` is None only during the legacy-format size-scan pass.
    """

    key: str
    dtype: TorchDtype
    nbytes: int
    byteorder: str
    data: np.ndarray | None

    @property
    def numel(self) -> int:
        return self.nbytes // self.dtype.itemsize


# ----------------------------------------------------------------------------
# placeholders
# ----------------------------------------------------------------------------


class InertObject:
    """Stand-in for an object of a non-allowed global; never runs any code.

    Subclasses are made per global (``placeholder_type``); the class attribute
    ``global_name`` is the dotted name. Instances record what the pickle gave
    them: ``args``/``kwargs`` (construction or call), ``state`` (BUILD),
    ``list_items`` (APPEND/APPENDS), ``dict_items`` (SETITEM/SETITEMS).
    """

    global_name = "?"
    _on_create: Callable[[str], None] | None = None

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.kwargs = args, kwargs
        obj.state, obj.list_items, obj.dict_items = None, [], {}
        if cls._on_create is not None:
            cls._on_create(cls.global_name)
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def append(self, item):
        self.list_items.append(item)

    def extend(self, items):
        self.list_items.extend(items)

    def __setitem__(self, key, value):
        self.dict_items[key] = value

    def __call__(self, *args, **kwargs):
        return _call_result_type(self)(*args, **kwargs)

    def __reduce__(self):
        raise TypeError(f"InertObject for {self.global_name!r} cannot be pickled")

    def __repr__(self):
        return f"<inert {self.global_name} args={len(self.args)} state={type(self.state).__name__}>"


def _call_result_type(obj: InertObject) -> type:
    """Placeholder type for the result of calling an inert object."""
    return placeholder_type(f"{obj.global_name}(...)", type(obj)._on_create)


def placeholder_type(global_name: str, on_create: Callable[[str], None] | None = None) -> type:
    """A fresh ``InertObject`` subclass standing for ``global_name``."""
    short = global_name.rsplit(".", 1)[-1]
    return type(f"Inert[{short}]", (InertObject,), {"global_name": global_name, "_on_create": on_create})


# ----------------------------------------------------------------------------
# tensor reconstruction
# ----------------------------------------------------------------------------


def _decode_bfloat16(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32 (exact: bf16 is the top half of fp32)."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


# Zero-stride (expanded) tensors are copied densely; cap how far a storage may be blown up.
_MAX_EXPANDED_ELEMENTS = 2**26


def _validate_geometry(where: str, storage: TorchStorage, dtype: TorchDtype, offset, size, stride) -> int:
    """Check offset/size/stride are in bounds of the storage; returns its element count."""
    ints = lambda xs: all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x >= 0 for x in xs)
    if not (isinstance(size, (tuple, list)) and isinstance(stride, (tuple, list))):
        raise CheckpointFormatError(f"{where}: size/stride must be tuples, got {size!r}, {stride!r}")
    if len(size) != len(stride) or not ints(size) or not ints(stride) or not ints([offset]):
        raise CheckpointFormatError(
            f"{where}: invalid tensor geometry offset={offset!r} size={size!r} stride={stride!r}"
        )
    numel = storage.nbytes // dtype.itemsize
    n_out = int(np.prod([int(s) for s in size], dtype=object)) if size else 1
    if n_out > max(8 * numel, _MAX_EXPANDED_ELEMENTS):
        raise CheckpointFormatError(
            f"{where}: tensor of size {tuple(size)} ({n_out} elements) expands storage {storage.key!r} of "
            f"{numel} elements by zero strides; refusing to materialise it"
        )
    if all(s > 0 for s in size):
        last = int(offset) + sum((int(s) - 1) * int(st) for s, st in zip(size, stride))
        if last >= numel:
            raise CheckpointFormatError(
                f"{where}: tensor (offset={offset}, size={tuple(size)}, stride={tuple(stride)}) reads "
                f"element {last} of storage {storage.key!r} with only {numel} {dtype.name} elements"
            )
    return numel


def tensor_from_storage(
    storage: TorchStorage, dtype: TorchDtype, offset: int, size, stride, where: str = "checkpoint"
) -> np.ndarray:
    """Contiguous numpy copy of the strided view ``(offset, size, stride)`` of ``storage``.

    offset/size/stride are in elements of ``dtype`` (torch conventions). The
    result is native-endian; bfloat16 is returned as float32.
    """
    numel = _validate_geometry(where, storage, dtype, offset, size, stride)
    if storage.data is None:  # legacy size-scan pass: no data yet
        return np.zeros((0,), np.uint8)
    size = tuple(int(s) for s in size)
    raw_dtype = dtype.storage_numpy_dtype(storage.byteorder)
    flat = np.frombuffer(storage.data, dtype=raw_dtype, count=numel)
    if 0 in size:
        out = np.zeros(size, raw_dtype.newbyteorder("="))
    else:
        step = raw_dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[int(offset):], shape=size, strides=tuple(int(s) * step for s in stride), writeable=False
        )
        out = np.array(view, dtype=raw_dtype.newbyteorder("="), copy=True, order="C")
    if dtype.name == "bfloat16":
        return _decode_bfloat16(out)
    if dtype.name == "bool":
        return out != 0
    return out


# ----------------------------------------------------------------------------
# the restricted unpickler
# ----------------------------------------------------------------------------


def _ascii(x) -> Any:
    return x.decode("ascii") if isinstance(x, bytes) else x


def _py3_name(module: str, name: str) -> tuple[str, str]:
    """Python-2 names written by protocol < 3 pickles -> Python-3 names (as pickle does)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _torch_device(*args) -> str:
    """``torch.device(type[, index])`` -> ``'type[:index]'`` (no torch needed)."""
    if len(args) == 1 and isinstance(args[0], str):
        return args[0]
    if len(args) == 2 and isinstance(args[0], str) and isinstance(args[1], int):
        return f"{args[0]}:{args[1]}"
    raise CheckpointFormatError(f"torch.device with unexpected arguments {args!r}")


def _codecs_encode(obj, encoding="utf-8", errors="strict"):
    """``_codecs.encode`` as used by protocol-2 pickles of ``bytes`` (latin1, strict only)."""
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1", "iso-8859-1") or errors != "strict":
        raise CheckpointFormatError(f"_codecs.encode only allowed for str with latin1, got {encoding!r}")
    return obj.encode("latin1")


def _safe_bytes(cls):
    def build(*args):
        if not args:
            return cls()
        if len(args) == 1 and isinstance(args[0], (bytes, bytearray)):
            return cls(args[0])
        if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1"):
            return cls(args[0], "latin1")
        raise CheckpointFormatError(f"{cls.__name__}() with non-allowed arguments in checkpoint")

    return build


def _numpy_globals() -> dict[tuple[str, str], Any]:
    from numpy._core import multiarray, numeric

    def reconstruct(subtype, shape, dtype):
        if subtype is not np.ndarray:
            raise CheckpointFormatError(f"numpy _reconstruct of non-ndarray subtype {subtype!r}")
        dims = shape if isinstance(shape, tuple) else (shape,)
        if not all(isinstance(d, int) for d in dims) or 0 not in dims:
            # numpy pickles arrays as _reconstruct(ndarray, (0,), b'b') + __setstate__(real data);
            # a non-empty shape here would only allocate memory.
            raise CheckpointFormatError(f"numpy _reconstruct with non-empty shape {shape!r}")
        return multiarray._reconstruct(np.ndarray, shape, dtype)

    def frombuffer(buf, dtype, shape, order):
        return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order).copy()

    table = {("numpy", "dtype"): np.dtype, ("numpy", "ndarray"): np.ndarray}
    for core in ("numpy.core", "numpy._core"):
        table[(f"{core}.multiarray", "scalar")] = multiarray.scalar
        table[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        table[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return table


@dataclass
class _Events:
    """Mutable record of what the unpickler met (feeds the LoadReport)."""

    placeholders: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    tensors: int = 0

    def placeholder_created(self, name: str) -> None:
        self.placeholders[name] = self.placeholders.get(name, 0) + 1


StorageLoader = Callable[[str, TorchDtype, int], TorchStorage]


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals; others become inert.

    storage_loader(key, dtype, numel_from_pid) returns the TorchStorage for a
    persistent id. With ``plain=True`` (small metadata pickles) any global or
    persistent id is an error.
    """

    def __init__(self, file, *, where: str, events: _Events, storage_loader: StorageLoader | None = None,
                 plain: bool = False, encoding: str = "utf-8"):
        super().__init__(file, encoding=encoding)
        self._where, self._events, self._loader, self._plain = where, events, storage_loader, plain
        self._placeholder_types: dict[str, type] = {}
        self._views: dict[str, TorchStorage] = {}
        self._allowed = self._allowed_globals()

    # ---- globals ---------------------------------------------------------
    def _allowed_globals(self) -> dict[tuple[str, str], Any]:
        table: dict[tuple[str, str], Any] = {
            ("collections", "OrderedDict"): collections.OrderedDict,
            ("torch._utils", "_rebuild_tensor"): self._rebuild_tensor_v1,
            ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor_v2,
            ("torch._utils", "_rebuild_tensor_v3"): self._rebuild_tensor_v3,
            ("torch._utils", "_rebuild_parameter"): self._rebuild_parameter,
            ("torch._utils", "_rebuild_parameter_with_state"): self._rebuild_parameter,
            ("torch._utils", "_rebuild_device_tensor_from_numpy"): self._rebuild_from_numpy,
            ("torch._tensor", "_rebuild_from_type_v2"): self._rebuild_from_type_v2,
            ("torch._tensor", "_rebuild_from_type"): self._rebuild_from_type_v1,
            ("torch", "device"): _torch_device,
            ("torch", "Size"): tuple,
            ("_codecs", "encode"): _codecs_encode,
        }
        for name, fn in [("set", set), ("frozenset", frozenset), ("slice", slice), ("complex", complex),
                         ("bytes", _safe_bytes(bytes)), ("bytearray", _safe_bytes(bytearray))]:
            table[("builtins", name)] = fn
        for name in list(_DTYPES) + list(_DTYPE_ALIASES):
            table[("torch", name)] = _DTYPES[_DTYPE_ALIASES.get(name, name)]
        for name, dt in _STORAGE_TYPES.items():
            for mod in ("torch", "torch.cuda", "torch.storage"):
                table[(mod, name)] = StorageType(name, _DTYPES[dt])
        for mod, name in [("torch", "Tensor"), ("torch._tensor", "Tensor"), ("torch.nn.parameter", "Parameter"),
                          ("torch.nn.parameter", "Buffer")]:
            table[(mod, name)] = TensorType(f"{mod}.{name}")
        table.update(_numpy_globals())
        return table

    def find_class(self, module, name):
        module, name = _py3_name(_ascii(module), _ascii(name))
        if self._plain:
            raise CheckpointFormatError(f"{self._where}: unexpected global {module}.{name} in a metadata pickle")
        allowed = self._allowed.get((module, name))
        if allowed is not None:
            return allowed
        qual = f"{module}.{name}"
        if qual not in self._placeholder_types:
            self._events.placeholders.setdefault(qual, 0)
            self._placeholder_types[qual] = placeholder_type(qual, self._events.placeholder_created)
        return self._placeholder_types[qual]

    # ---- storages --------------------------------------------------------
    def persistent_load(self, pid):
        if self._plain or self._loader is None:
            raise CheckpointFormatError(f"{self._where}: unexpected persistent id {pid!r}")
        if not isinstance(pid, tuple) or not pid:
            raise CheckpointFormatError(f"{self._where}: malformed persistent id {pid!r}")
        kind = _ascii(pid[0])
        if kind == "module" and len(pid) == 4:  # legacy: (module, cls, source_file, source)
            self._events.warnings.append(f"pickled nn.Module class {getattr(pid[1], 'global_name', pid[1])!r}")
            return pid[1]
        if kind != "storage" or len(pid) not in (5, 6):
            raise CheckpointFormatError(f"{self._where}: unsupported persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1], str(_ascii(pid[2])), pid[3], pid[4]
        dtype = storage_type.dtype if isinstance(storage_type, StorageType) else storage_type
        if not isinstance(dtype, TorchDtype):
            raise CheckpointFormatError(
                f"{self._where}: storage {key!r} has unsupported storage type "
                f"{getattr(storage_type, 'global_name', storage_type)!r}"
            )
        if not isinstance(numel, int) or numel < 0:
            raise CheckpointFormatError(f"{self._where}: storage {key!r} has invalid size {numel!r}")
        storage = self._loader(key, dtype, numel)
        view = pid[5] if len(pid) == 6 else None
        return storage if view is None else self._storage_view(storage, view)

    def _storage_view(self, root: TorchStorage, view) -> TorchStorage:
        """Legacy storage views: (view_key, offset, size) in elements of the root dtype."""
        view_key, offset, size = str(_ascii(view[0])), int(view[1]), int(view[2])
        if view_key not in self._views:
            item = root.dtype.itemsize
            if offset < 0 or size < 0 or (offset + size) * item > root.nbytes:
                raise CheckpointFormatError(f"{self._where}: storage view {view_key!r} out of bounds of {root.key!r}")
            data = None if root.data is None else root.data[offset * item:(offset + size) * item]
            self._views[view_key] = TorchStorage(view_key, root.dtype, size * item, root.byteorder, data)
        return self._views[view_key]

    # ---- tensors ---------------------------------------------------------
    def _inert_call(self, name: str, args) -> InertObject:
        self._events.warnings.append(f"{name} called with unsupported storage {type(args[0]).__name__}")
        return placeholder_type(name, self._events.placeholder_created)(*args)

    def _tensor(self, fn_name, storage, dtype, offset, size, stride, args):
        if not isinstance(storage, TorchStorage):
            return self._inert_call(f"torch._utils.{fn_name}", args)
        self._events.tensors += 1
        where = f"{self._where} (storage {storage.key!r})"
        return tensor_from_storage(storage, dtype, offset, size, stride, where)

    def _rebuild_tensor_v1(self, storage, storage_offset, size, stride, *rest):
        dtype = getattr(storage, "dtype", None)
        return self._tensor("_rebuild_tensor", storage, dtype, storage_offset, size, stride, (storage,))

    def _rebuild_tensor_v2(self, storage, storage_offset, size, stride, requires_grad=False,
                           backward_hooks=None, metadata=None):
        dtype = getattr(storage, "dtype", None)
        return self._tensor("_rebuild_tensor_v2", storage, dtype, storage_offset, size, stride, (storage,))

    def _rebuild_tensor_v3(self, storage, storage_offset, size, stride, requires_grad, backward_hooks,
                           dtype, metadata=None):
        if not isinstance(dtype, TorchDtype):
            raise CheckpointFormatError(f"{self._where}: _rebuild_tensor_v3 with non-dtype {dtype!r}")
        return self._tensor("_rebuild_tensor_v3", storage, dtype, storage_offset, size, stride, (storage,))

    def _rebuild_parameter(self, data, requires_grad=True, backward_hooks=None, state=None):
        return data

    def _rebuild_from_numpy(self, data, dtype=None, device=None, requires_grad=False):
        if not isinstance(data, np.ndarray):
            raise CheckpointFormatError(f"{self._where}: _rebuild_device_tensor_from_numpy without an array")
        return data

    def _rebuild_from_type_v2(self, func, new_type, args, state):
        # func went through find_class, so it is an allowed rebuild or an inert placeholder.
        return func(*args)

    def _rebuild_from_type_v1(self, func, new_type, args, dict_):
        return func(*args)


# ----------------------------------------------------------------------------
# report and entry point
# ----------------------------------------------------------------------------


@dataclass
class LoadReport:
    """What ``load_torch_checkpoint`` found.

    format: 'zip' | 'legacy'; byteorder: storage byte order; version: archive
    version string (zip) or legacy protocol version; num_tensors /
    num_storages: counts rebuilt; placeholders: dotted global name -> number
    of inert objects built from it (0 = only referenced); warnings: messages.
    """

    path: str
    format: str
    byteorder: str
    version: str
    num_tensors: int
    num_storages: int
    placeholders: dict[str, int]
    warnings: list[str]

    def summary(self) -> str:
        lines = [f"{self.path}: {self.format} format, {self.num_tensors} tensors in {self.num_storages} storages"]
        if self.placeholders:
            lines.append("inert placeholders: " + ", ".join(f"{k} (x{v})" for k, v in sorted(self.placeholders.items())))
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _plain_pickle(f, where: str, what: str):
    """Load a small metadata pickle (no globals or persistent ids allowed)."""
    try:
        return _RestrictedUnpickler(f, where=f"{where} ({what})", events=_Events(), plain=True).load()
    except CheckpointFormatError:
        raise
    except Exception as e:  # truncated / garbage
        raise CheckpointFormatError(f"{where}: cannot read the {what} pickle: {e}") from e


def _unpickle_main(f, where: str, events: _Events, loader: StorageLoader, encoding: str):
    try:
        return _RestrictedUnpickler(f, where=where, events=events, storage_loader=loader, encoding=encoding).load()
    except CheckpointFormatError as e:
        if str(e).startswith(where):
            raise
        raise CheckpointFormatError(f"{where}: {e}") from e
    except Exception as e:
        raise CheckpointFormatError(f"{where}: cannot unpickle the checkpoint object: {type(e).__name__}: {e}") from e


def _zip_prefix(zf: zipfile.ZipFile, where: str) -> str:
    candidates = [n[: -len("data.pkl")] for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(candidates) != 1:
        raise CheckpointFormatError(f"{where}: expected exactly one '<name>/data.pkl' in the zip archive, "
                                    f"found {len(candidates)}")
    return candidates[0]


def _load_zip(path: str, encoding: str):
    where = path
    with zipfile.ZipFile(path) as zf:
        prefix = _zip_prefix(zf, where)
        names = set(zf.namelist())
        byteorder = zf.read(prefix + "byteorder").decode().strip() if prefix + "byteorder" in names else "little"
        if byteorder not in ("little", "big"):
            raise CheckpointFormatError(f"{where}: {prefix}byteorder must be 'little' or 'big', got {byteorder!r}")
        version = ""
        for vname in (prefix + ".data/version", prefix + "version"):
            if vname in names:
                version = zf.read(vname).decode(errors="replace").strip()
                break
        storages: dict[str, TorchStorage] = {}

        def loader(key: str, dtype: TorchDtype, numel: int) -> TorchStorage:
            if key not in storages:
                record = f"{prefix}data/{key}"
                if record not in names:
                    raise CheckpointFormatError(f"{where}: storage record {record!r} missing from the archive")
                raw = np.frombuffer(zf.read(record), np.uint8)
                nbytes = numel * dtype.itemsize
                if raw.size < nbytes:
                    raise CheckpointFormatError(f"{where}: storage record {record!r} has {raw.size} bytes, "
                                                f"expected {nbytes} ({numel} x {dtype.name})")
                storages[key] = TorchStorage(key, dtype, nbytes, byteorder, raw[:nbytes])
            return storages[key]

        events = _Events()
        with zf.open(prefix + "data.pkl") as fpkl:
            obj = _unpickle_main(io.BytesIO(fpkl.read()), where, events, loader, encoding)
    return obj, LoadReport(path, "zip", byteorder, version, events.tensors, len(storages),
                           events.placeholders, events.warnings)


def _load_legacy(path: str, data: bytes, encoding: str):
    where = path
    f = io.BytesIO(data)
    magic = _plain_pickle(f, where, "magic number")
    if magic != LEGACY_MAGIC_NUMBER:
        raise CheckpointFormatError(f"{where}: not a torch.save file (bad legacy magic number)")
    protocol = _plain_pickle(f, where, "protocol version")
    if protocol != LEGACY_PROTOCOL_VERSION:
        raise CheckpointFormatError(f"{where}: unsupported legacy protocol version {protocol!r}, expected 1001")
    sys_info = _plain_pickle(f, where, "sys_info")
    if not isinstance(sys_info, dict):
        raise CheckpointFormatError(f"{where}: legacy sys_info is not a dict")
    main_start = f.tell()

    # Pass 1: learn each storage's dtype (needed to size the raw records).
    specs: dict[str, TorchStorage] = {}

    def scan_loader(key: str, dtype: TorchDtype, numel: int) -> TorchStorage:
        specs.setdefault(key, TorchStorage(key, dtype, numel * dtype.itemsize, "little", None))
        return specs[key]

    _unpickle_main(f, where, _Events(), scan_loader, encoding)
    keys = _plain_pickle(f, where, "storage key list")
    if not isinstance(keys, list):
        raise CheckpointFormatError(f"{where}: legacy storage key list is not a list")

    # The raw records, in key-list order: int64 LE element count, then data (LE).
    offset = f.tell()
    storages: dict[str, TorchStorage] = {}
    for key in map(lambda k: str(_ascii(k)), keys):
        if key not in specs:
            raise CheckpointFormatError(f"{where}: storage key {key!r} is listed but never referenced")
        spec = specs[key]
        if offset + 8 > len(data):
            raise CheckpointFormatError(f"{where}: truncated before storage {key!r}")
        numel = int.from_bytes(data[offset:offset + 8], "little")
        nbytes = numel * spec.dtype.itemsize
        offset += 8
        if nbytes != spec.nbytes:
            raise CheckpointFormatError(f"{where}: storage {key!r} record has {numel} elements, "
                                        f"expected {spec.numel}")
        if offset + nbytes > len(data):
            raise CheckpointFormatError(f"{where}: truncated: storage {key!r} needs {nbytes} bytes at "
                                        f"offset {offset}, the file has {len(data)}")
        raw = np.frombuffer(data, np.uint8, count=nbytes, offset=offset)
        storages[key] = TorchStorage(key, spec.dtype, nbytes, "little", raw)
        offset += nbytes
    missing = sorted(set(specs) - set(storages))
    if missing:
        raise CheckpointFormatError(f"{where}: storages referenced but without data: {missing}")

    # Pass 2: the real objects.
    events = _Events()
    f.seek(main_start)
    obj = _unpickle_main(f, where, events, lambda key, dtype, numel: storages[key], encoding)
    return obj, LoadReport(path, "legacy", "little", str(protocol), events.tensors, len(storages),
                           events.placeholders, events.warnings)


def load_torch_checkpoint(path: str | os.PathLike, *, encoding: str = "utf-8") -> tuple[Any, LoadReport]:
    """Read a ``torch.save`` file (zip or legacy format) without torch.

    Returns ``(obj, report)``: ``obj`` is the saved object with tensors as numpy
    arrays (see module docstring) and non-allowed objects as
    :class:`InertObject` placeholders; ``report`` is a :class:`LoadReport`.
    ``encoding`` is the pickle encoding for Python-2 strings ('latin1' for
    py2-era checkpoints). Emits a :class:`PlaceholderWarning` when
    placeholders were needed. Raises :class:`CheckpointFormatError` (naming
    the file) on unreadable input and ``FileNotFoundError`` if missing.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if zipfile.is_zipfile(path):
        try:
            obj, report = _load_zip(path, encoding)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:  # damaged records (CRC, short reads)
            raise CheckpointFormatError(f"{path}: damaged zip-format torch checkpoint ({type(e).__name__}: {e}); "
                                        f"re-download or re-save it") from e
    else:
        with open(path, "rb") as fh:
            data = fh.read()
        if data[:4] == ZIP_LOCAL_HEADER:
            raise CheckpointFormatError(
                f"{path}: truncated zip-format torch checkpoint: it starts like a zip archive (the torch.save "
                f"default) but its end (the zip central directory) is missing; {len(data)} bytes read. The file "
                f"was cut short (interrupted download or copy): re-download or re-save it")
        if len(data) >= 512 and tarfile.is_tarfile(path):
            raise CheckpointFormatError(f"{path}: pre-0.4 tar-format torch checkpoints are not supported; "
                                        "re-save it with a newer torch")
        obj, report = _load_legacy(path, data, encoding)
    if report.placeholders:
        warnings.warn(
            f"{path}: replaced non-allowed globals by inert placeholders: "
            + ", ".join(sorted(report.placeholders)),
            PlaceholderWarning,
            stacklevel=2,
        )
    return obj, report
