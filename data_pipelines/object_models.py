"""Known-object meshes of the real hand-object datasets (handobjectconsist's object branch), read from the
user's raw folders at start-up (never stored with the records, never committed).

Where they come from (config key ``data.object_models``, a folder; empty = the default under
``data.manual_dir`` named below, when that folder exists; a config without the key reads none):

* FPHAB (``data.name=fphab``): ``<dir>/<folder>_model/<folder>_model.ply`` for the four objects of
  :data:`data_pipelines.fphab.layout.HO_OBJECTS`, ``<folder>`` = the object name except juice_bottle,
  whose folder is ``juice`` (upstream ``fhbutils.load_objects``). Default ``<manual_dir>/Object_models``.
  PLY vertices are in metres (upstream multiplies them by 1000 before the millimetre object pose).
* HO3D (``data.name=ho3d``): ``<dir>/<ycb name>/textured_simple_2000.obj`` (upstream's ``modelsprocess``
  folder of simplified YCB models) or, when that file is absent, the YCB release's
  ``<dir>/<ycb name>/textured_simple.obj`` (give ``data.object_models=YCB/models``), for the ten YCB objects
  of :data:`HO3D_OBJECTS`. Default ``<manual_dir>/modelsprocess``. Metres.

Canonical vertices (upstream ``center_vert_bbox(scale=False)``, reference 1.6) = model vertices minus the
centre of their axis-aligned bounding box. A record's object pose maps MODEL coordinates to the camera,
``X = R v + t``; with ``v = canonical + c`` (c the box centre) the canonical mesh is placed by
``object_rot = R`` and ``object_transl = R c + t`` (the camera position of the box centre, which is what
MeshRegNet's object branch predicts). Upstream reads the models with ``trimesh.load`` (which merges
duplicate vertices by default); the files are read here as they are, so a model with duplicated vertices
keeps them (the bounding box, hence the placement, is the same).

Batched arrays (:class:`ObjectMeshes`): objects have different vertex and face counts, so the per-record
vertices are padded to the largest count by tiling (vertex j of an object with n vertices fills slots j,
j + n, ...: upstream's collate tiles the same way), with ``object_vertex_valid`` marking the real ones for
the metrics. For rendering, :meth:`ObjectMeshes.render_topology` gives ONE static topology for every
sample: a triangle soup with as many faces as the largest object, each sample's own object's triangles
gathered into it and the rest parked behind the camera, where the rasteriser drops them (objects sharing one
topology, e.g. the built-in scenes, render it directly).
"""
from __future__ import annotations

import dataclasses
import functools
import os
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from data_pipelines.manual import CorruptFileError

CONFIG_KEY = "data.object_models"
# the ten YCB objects of HO-3D (v2 / v3)
HO3D_OBJECTS = ("003_cracker_box", "004_sugar_box", "006_mustard_bottle", "010_potted_meat_can", "011_banana",
                "019_pitcher_base", "021_bleach_cleanser", "025_mug", "035_power_drill", "037_scissors")
HO3D_MODEL_FILES = ("textured_simple_2000.obj", "textured_simple.obj")
FPHAB_FOLDERS = {"juice_bottle": "juice"}  # object name -> model folder stem where they differ
DEFAULT_SUBDIRS = {"fphab": "Object_models", "ho3d": "modelsprocess"}
BEHIND_CAMERA = (0.0, 0.0, -1.0)  # where the render topology parks the objects a sample does not show


# ----------------------------------------------------------------------------- mesh files
_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
              "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
              "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}
_PLY_FORMATS = {"ascii": None, "binary_little_endian": "<", "binary_big_endian": ">"}


def _fan(polygons: Sequence[Sequence[int]], path, what: str) -> np.ndarray:
    """Polygons (index lists) -> triangles (F, 3) by fans around their first vertex."""
    tris = []
    for n, poly in enumerate(polygons):
        if len(poly) < 3:
            raise CorruptFileError(path, f"{what} {n} has {len(poly)} vertices (a face needs at least 3)")
        tris += [(poly[0], poly[k], poly[k + 1]) for k in range(1, len(poly) - 1)]
    return np.asarray(tris, np.int64).reshape(-1, 3)


def _check_mesh(verts: np.ndarray, faces: np.ndarray, path) -> Tuple[np.ndarray, np.ndarray]:
    if len(verts) == 0:
        raise CorruptFileError(path, "no vertices")
    if len(faces) == 0:
        raise CorruptFileError(path, "no faces")
    if not np.all(np.isfinite(verts)):
        raise CorruptFileError(path, "non-finite vertex coordinates")
    if faces.min() < 0 or faces.max() >= len(verts):
        raise CorruptFileError(path, f"face indices outside 0..{len(verts) - 1} (got {faces.min()}..{faces.max()})")
    return verts.astype(np.float64), faces.astype(np.int64)


def read_ply(path) -> Tuple[np.ndarray, np.ndarray]:
    """A PLY mesh (``ascii``, ``binary_little_endian`` or ``binary_big_endian``) -> vertices (V, 3) float64
    (the ``x``, ``y``, ``z`` properties of element ``vertex``; other properties are read and dropped) and
    triangles (F, 3) int64 (list property ``vertex_indices`` / ``vertex_index`` of element ``face``;
    polygons become fans). Other elements are read past. Errors name the file (CorruptFileError)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CorruptFileError(path, f"cannot read ({err.strerror or err})") from None
    if not data.startswith(b"ply"):
        raise CorruptFileError(path, "not a PLY file (no 'ply' magic line)")
    end = data.find(b"end_header")
    if end < 0:
        raise CorruptFileError(path, "PLY header without 'end_header'")
    body_start = data.index(b"\n", end) + 1 if b"\n" in data[end:] else len(data)
    fmt, elements = None, []  # elements: [name, count, [(prop name, dtype) | (name, count dtype, item dtype)]]
    for n, raw in enumerate(data[:end].decode("latin1").splitlines()[1:], 2):
        words = raw.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        try:
            if words[0] == "format":
                if words[1] not in _PLY_FORMATS:
                    raise CorruptFileError(path, f"header line {n}: format {words[1]!r} (expected one of "
                                                 f"{sorted(_PLY_FORMATS)})")
                fmt = words[1]
            elif words[0] == "element":
                elements.append([words[1], int(words[2]), []])
            elif words[0] == "property":
                if not elements:
                    raise CorruptFileError(path, f"header line {n}: property before any element")
                if words[1] == "list":
                    elements[-1][2].append((words[4], _PLY_TYPES[words[2]], _PLY_TYPES[words[3]]))
                else:
                    elements[-1][2].append((words[2], _PLY_TYPES[words[1]]))
            else:
                raise CorruptFileError(path, f"header line {n}: unknown keyword {words[0]!r}")
        except (IndexError, KeyError, ValueError) as err:
            raise CorruptFileError(path, f"header line {n}: cannot parse {raw.strip()!r} ({err})") from None
    if fmt is None:
        raise CorruptFileError(path, "PLY header without a 'format' line")
    names = [e[0] for e in elements]
    for needed in ("vertex", "face"):
        if needed not in names:
            raise CorruptFileError(path, f"PLY without a {needed!r} element (elements: {names})")
    body = data[body_start:]
    tables: Dict[str, dict] = {}
    try:
        if fmt == "ascii":
            tokens = body.split()
            pos = 0
            for name, count, props in elements:
                rows = {p[0]: [] for p in props}
                for _ in range(count):
                    for prop in props:
                        if len(prop) == 3:
                            k = int(tokens[pos])
                            rows[prop[0]].append([int(t) for t in tokens[pos + 1: pos + 1 + k]])
                            if len(rows[prop[0]][-1]) != k:
                                raise IndexError("truncated list")
                            pos += 1 + k
                        else:
                            rows[prop[0]].append(float(tokens[pos]))
                            pos += 1
                tables[name] = rows
        else:
            order = _PLY_FORMATS[fmt]
            pos = 0
            for name, count, props in elements:
                if all(len(p) == 2 for p in props):  # fixed-size rows: one structured read
                    dtype = np.dtype([(p[0], order + p[1]) for p in props])
                    arr = np.frombuffer(body, dtype, count, pos)
                    pos += dtype.itemsize * count
                    tables[name] = {p[0]: arr[p[0]] for p in props}
                    continue
                rows = {p[0]: [] for p in props}
                for _ in range(count):
                    for prop in props:
                        if len(prop) == 3:
                            cdt, idt = np.dtype(order + prop[1]), np.dtype(order + prop[2])
                            k = int(np.frombuffer(body, cdt, 1, pos)[0])
                            pos += cdt.itemsize
                            rows[prop[0]].append(np.frombuffer(body, idt, k, pos).tolist())
                            pos += idt.itemsize * k
                        else:
                            dt = np.dtype(order + prop[1])
                            rows[prop[0]].append(np.frombuffer(body, dt, 1, pos)[0])
                            pos += dt.itemsize
                tables[name] = rows
    except (IndexError, ValueError) as err:
        raise CorruptFileError(path, f"PLY body ({fmt}) shorter than its header declares or malformed ({err})") \
            from None
    vertex = tables["vertex"]
    missing = [c for c in "xyz" if c not in vertex]
    if missing:
        raise CorruptFileError(path, f"element 'vertex' lacks properties {missing}")
    verts = np.stack([np.asarray(vertex[c], np.float64) for c in "xyz"], axis=-1).reshape(-1, 3)
    face = tables["face"]
    key = next((k for k in ("vertex_indices", "vertex_index") if k in face), None)
    if key is None:
        raise CorruptFileError(path, f"element 'face' has no 'vertex_indices' list (properties: {sorted(face)})")
    return _check_mesh(verts, _fan(face[key], path, "face"), path)


def read_obj(path) -> Tuple[np.ndarray, np.ndarray]:
    """A Wavefront OBJ mesh -> vertices (V, 3) float64 (``v x y z [w]``) and triangles (F, 3) int64 (``f``
    lines ``a``, ``a/b``, ``a//c`` or ``a/b/c``, 1-based or negative = relative; polygons become fans).
    Texture coordinates, normals, groups and materials are ignored. Errors name the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise CorruptFileError(path, f"cannot read ({err.strerror or err})") from None
    verts: List[Tuple[float, float, float]] = []
    polys: List[List[int]] = []
    for n, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words:
            continue
        try:
            if words[0] == "v":
                verts.append((float(words[1]), float(words[2]), float(words[3])))
            elif words[0] == "f":
                idx = [int(w.split("/")[0]) for w in words[1:]]
                polys.append([i - 1 if i > 0 else len(verts) + i for i in idx])
                if any(i == 0 for i in idx):
                    raise ValueError("index 0 (OBJ indices start at 1)")
        except (IndexError, ValueError) as err:
            raise CorruptFileError(path, f"line {n}: cannot parse {line.strip()[:80]!r} ({err})") from None
    return _check_mesh(np.asarray(verts, np.float64).reshape(-1, 3), _fan(polys, path, "face"), path)


def read_mesh(path) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`read_ply` or :func:`read_obj` by the file's extension."""
    suffix = Path(path).suffix.lower()
    if suffix == ".ply":
        return read_ply(path)
    if suffix == ".obj":
        return read_obj(path)
    raise CorruptFileError(path, f"unknown mesh format {suffix!r} (expected .ply or .obj)")


def bbox_center(verts: np.ndarray) -> np.ndarray:
    """Centre (3,) of the axis-aligned bounding box of verts (V, 3)."""
    verts = np.asarray(verts, np.float64)
    return (verts.min(axis=0) + verts.max(axis=0)) / 2.0


# ----------------------------------------------------------------------------- object sets
@dataclasses.dataclass(frozen=True)
class ObjectMeshes:
    """The known objects of a dataset, indexed by the record's ``object_id``.

    names (O,); canonical: O arrays (V_o, 3) float32, bounding-box centred, metres; faces: O arrays (F_o, 3)
    int32 into the object's own vertices; centres (O, 3) float64: the box centre in model coordinates;
    sources: the files read (or where they came from)."""

    names: Tuple[str, ...]
    canonical: Tuple[np.ndarray, ...]
    faces: Tuple[np.ndarray, ...]
    centres: np.ndarray
    sources: Tuple[str, ...]

    def __post_init__(self):
        if not (len(self.names) == len(self.canonical) == len(self.faces) == len(self.centres) == len(self.sources)):
            raise ValueError("ObjectMeshes: names, canonical, faces, centres and sources differ in length")
        if not self.names:
            raise ValueError("ObjectMeshes: no objects")

    @staticmethod
    def from_models(names: Sequence[str], models: Sequence[Tuple[np.ndarray, np.ndarray]],
                    sources: Sequence[str]) -> "ObjectMeshes":
        """Model meshes (vertices in model coordinates, faces) -> bounding-box-centred canonical meshes."""
        centres = np.stack([bbox_center(v) for v, _ in models])
        return ObjectMeshes(tuple(names), tuple((np.asarray(v, np.float64) - c).astype(np.float32)
                                                for (v, _), c in zip(models, centres)),
                            tuple(np.asarray(f, np.int32) for _, f in models), centres, tuple(sources))

    @staticmethod
    def shared(names: Sequence[str], vertices: np.ndarray, faces: np.ndarray, source: str) -> "ObjectMeshes":
        """Objects with one topology (the built-in scenes): vertices (O, V, 3) already canonical, faces (F, 3)."""
        vertices = np.asarray(vertices, np.float32)
        return ObjectMeshes(tuple(str(n) for n in names), tuple(vertices), tuple(np.asarray(faces, np.int32)
                                                                                 for _ in vertices),
                            np.zeros((len(vertices), 3)), tuple(source for _ in vertices))

    def __len__(self) -> int:
        return len(self.names)

    @property
    def num_vertices(self) -> np.ndarray:
        return np.asarray([len(v) for v in self.canonical], np.int64)

    @property
    def max_vertices(self) -> int:
        return int(self.num_vertices.max())

    def index(self, name: str, where: str = "") -> int:
        """The object id of ``name`` (ValueError listing the known names)."""
        if name not in self.names:
            raise ValueError(f"{where}object {name!r} has no mesh; known objects: {list(self.names)}")
        return self.names.index(name)

    def padded(self) -> Tuple[np.ndarray, np.ndarray]:
        """(vertices (O, Vmax, 3) float32 tiled, vertex_valid (O, Vmax) bool) (module docstring)."""
        vmax = self.max_vertices
        out = np.stack([v[np.arange(vmax) % len(v)] for v in self.canonical]).astype(np.float32)
        valid = np.arange(vmax)[None, :] < self.num_vertices[:, None]
        return out, valid

    def shares_topology(self) -> bool:
        first = self.faces[0]
        return all(len(v) == len(self.canonical[0]) for v in self.canonical) and all(
            f.shape == first.shape and np.array_equal(f, first) for f in self.faces)

    def render_topology(self) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """(faces (F, 3) int32, soup (O, 3 F) int32 or None): the static mesh every sample renders.

        Objects sharing one topology: their faces over their own vertices (soup None). Otherwise a triangle
        soup of F = the largest face count: render vertex 3 k + c is corner c of face k of the sample's own
        object, i.e. padded vertex ``soup[object_id, 3 k + c]``, and -1 (a vertex parked behind the camera,
        so the face is never rasterised) past that object's faces (see the photometric system's
        ``Parts.render_object``). The rasteriser sees F faces whichever objects a batch holds; the flow's
        barycentric interpolation over a face is unchanged since its corners carry the same values."""
        if self.shares_topology():
            return self.faces[0], None
        fmax = max(len(f) for f in self.faces)
        soup = np.full((len(self), 3 * fmax), -1, np.int32)
        for o, f in enumerate(self.faces):
            soup[o, : 3 * len(f)] = f.reshape(-1)
        return np.arange(3 * fmax, dtype=np.int32).reshape(fmax, 3), soup

    def summary(self) -> str:
        return ", ".join(f"{n} ({len(v)} vertices, {len(f)} faces)" for n, v, f in
                         zip(self.names, self.canonical, self.faces))


def object_labels(meshes: ObjectMeshes, object_id: int, rot: np.ndarray, transl: np.ndarray,
                  valid: bool) -> Dict[str, np.ndarray]:
    """A record's object labels from its MODEL pose (``X = rot v + transl``, camera frame, metres):
    ``object_id``, ``object_rot`` (3, 3), ``object_transl`` (3,) (camera position of the box centre),
    ``object_vertices`` (Vmax, 3) (tiled padding) and ``object_vertex_valid`` (Vmax,), ``has_object``.
    Without a pose (``valid`` False): zeros, identity rotation, has_object False."""
    verts, vvalid = meshes.padded()
    if not valid:
        return {"object_id": np.int64(object_id), "object_rot": np.eye(3, dtype=np.float32),
                "object_transl": np.zeros(3, np.float32), "object_vertices": np.zeros_like(verts[0]),
                "object_vertex_valid": vvalid[object_id], "has_object": np.bool_(False)}
    rot = np.asarray(rot, np.float64).reshape(3, 3)
    centre_cam = rot @ meshes.centres[object_id] + np.asarray(transl, np.float64).reshape(3)
    return {"object_id": np.int64(object_id), "object_rot": rot.astype(np.float32),
            "object_transl": centre_cam.astype(np.float32),
            "object_vertices": (verts[object_id].astype(np.float64) @ rot.T + centre_cam).astype(np.float32),
            "object_vertex_valid": vvalid[object_id], "has_object": np.bool_(True)}


OBJECT_KINDS = ("object_id", "object_rot", "object_transl", "object_vertices", "object_vertex_valid", "has_object",
                "jitter_mask")


def image_size_of(encoded) -> Tuple[int, int]:
    """(H, W) of an encoded image (header only)."""
    import io

    from PIL import Image

    data = encoded if isinstance(encoded, (bytes, bytearray)) else np.asarray(encoded).item()
    with Image.open(io.BytesIO(data)) as img:
        return img.size[1], img.size[0]


def jitter_mask(encoded_image) -> np.ndarray:
    """A white (all-True) mask (H, W) of the frame: cropped with the frame by the pipeline
    (``transform_extra_labels`` resamples every ``*_mask``, 0 outside the image), it is upstream's
    ``JITTERMASK`` (0 on the padding of the crop)."""
    return np.ones(image_size_of(encoded_image), bool)


# ----------------------------------------------------------------------------- dataset tables
def models_dir(dataset: str, data_cfg: Mapping) -> Optional[str]:
    """The object-model folder of ``data_cfg``: ``data.object_models``, else (the key present but empty)
    ``<manual_dir>/<default>`` when that folder exists, else None. Configs without the key (systems that do not
    place known objects) never read object models, so their batches keep the records' own object pose."""
    if data_cfg.get("object_models") is None:
        return None
    given = str(data_cfg.get("object_models") or "")
    if given:
        return given
    manual = str(data_cfg.get("manual_dir") or "")
    if manual and dataset in DEFAULT_SUBDIRS and os.path.isdir(os.path.join(manual, DEFAULT_SUBDIRS[dataset])):
        return os.path.join(manual, DEFAULT_SUBDIRS[dataset])
    return None


def fphab_model_path(root, name: str) -> Path:
    folder = FPHAB_FOLDERS.get(name, name)
    return Path(root) / f"{folder}_model" / f"{folder}_model.ply"


def _missing_error(dataset: str, root, missing: List[str]) -> FileNotFoundError:
    listed = "\n".join(f"  {m}" for m in missing)
    return FileNotFoundError(f"{dataset} object meshes: config key {CONFIG_KEY}={os.fspath(root)!r}: "
                             f"{len(missing)} model file(s) missing:\n{listed}")


def _candidates(dataset: str, root: str) -> List[Path]:
    if dataset == "fphab":
        from data_pipelines.fphab.layout import HO_OBJECTS

        return [fphab_model_path(root, n) for n in HO_OBJECTS]
    return [Path(root) / n / f for n in HO3D_OBJECTS for f in HO3D_MODEL_FILES]


def _signature(dataset: str, root: str) -> tuple:
    """(path, size, mtime) of every candidate model file: the cache is keyed by it, so edited files are re-read."""
    out = []
    for p in _candidates(dataset, root) if dataset in DEFAULT_SUBDIRS else []:
        try:
            st = p.stat()
            out.append((os.fspath(p), st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((os.fspath(p), -1, -1))
    return tuple(out)


@functools.lru_cache(maxsize=8)
def _load(dataset: str, root: str, signature: tuple = ()) -> ObjectMeshes:
    del signature  # the cache key only
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{dataset} object meshes: config key {CONFIG_KEY}={root!r} is not a folder")
    if dataset == "fphab":
        from data_pipelines.fphab.layout import HO_OBJECTS

        names = HO_OBJECTS
        paths = [fphab_model_path(root, n) for n in names]
        missing = [os.fspath(p) for p in paths if not p.is_file()]
    elif dataset == "ho3d":
        names, paths, missing = HO3D_OBJECTS, [], []
        for n in names:
            found = [Path(root) / n / f for f in HO3D_MODEL_FILES if (Path(root) / n / f).is_file()]
            if found:
                paths.append(found[0])
            else:
                missing.append(" or ".join(os.fspath(Path(root) / n / f) for f in HO3D_MODEL_FILES))
    else:
        raise ValueError(f"no object-model table for dataset {dataset!r} (known: fphab, ho3d)")
    if missing:
        raise _missing_error(dataset, root, missing)
    meshes = ObjectMeshes.from_models(names, [read_mesh(p) for p in paths], [os.fspath(p) for p in paths])
    print(f"[data] {dataset} object meshes from {root}: {meshes.summary()}", file=sys.stderr)
    return meshes


def load_dataset_objects(dataset: str, root) -> ObjectMeshes:
    """The known objects of ``dataset`` ('fphab' or 'ho3d') from the folder ``root`` (read once per process)."""
    root = os.path.abspath(os.fspath(root))
    return _load(dataset, root, _signature(dataset, root))


def configured_objects(dataset: str, data_cfg: Mapping) -> Optional[ObjectMeshes]:
    """The objects of ``data_cfg`` (:func:`models_dir`), or None when no folder is configured."""
    root = models_dir(dataset, data_cfg)
    return None if root is None else load_dataset_objects(dataset, root)
