"""Synthetic object models in the real on-disk formats: FPHAB's ``Object_models/<obj>_model/<obj>_model.ply``
(ASCII or binary_little_endian PLY) and HO3D's ``<ycb name>/textured_simple_2000.obj`` (Wavefront OBJ with
texture coordinates, as the YCB models)."""
import os
import struct

import numpy as np

FPHAB_FOLDERS = {"juice_bottle": "juice", "liquid_soap": "liquid_soap", "milk": "milk", "salt": "salt"}
HO3D_NAMES = ("003_cracker_box", "004_sugar_box", "006_mustard_bottle", "010_potted_meat_can", "011_banana",
              "019_pitcher_base", "021_bleach_cleanser", "025_mug", "035_power_drill", "037_scissors")


def box_mesh(size, offset, rng=None, extra_vertices: int = 0):
    """A box (8 corners, 6 quads) of ``size`` (3,) metres whose bounding-box centre is ``offset`` (model
    coordinates are not centred, as the real models), plus ``extra_vertices`` interior vertices (different
    vertex counts per object). Returns (verts (V, 3), quads (6, 4))."""
    size, offset = np.asarray(size, float), np.asarray(offset, float)
    corners = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)]) * size + offset
    rng = rng or np.random.default_rng(0)
    inner = offset + rng.uniform(-0.4, 0.4, (extra_vertices, 3)) * size
    quads = np.array([[0, 1, 3, 2], [4, 6, 7, 5], [0, 4, 5, 1], [2, 3, 7, 6], [0, 2, 6, 4], [1, 5, 7, 3]])
    return np.concatenate([corners, inner]), quads


def write_ply(path, verts, polys, binary: bool) -> None:
    """PLY with a vertex element (x, y, z float + a uchar colour, as scans carry) and a face list
    (uchar count, int indices), after a comment and before an extra element ``edge``."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    header = ["ply", f"format {'binary_little_endian' if binary else 'ascii'} 1.0", "comment synthetic",
              f"element vertex {len(verts)}", "property float x", "property float y", "property float z",
              "property uchar red", f"element face {len(polys)}", "property list uchar int vertex_indices",
              "element edge 1", "property int vertex1", "property int vertex2", "end_header"]
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode())
        if binary:
            for v in verts:
                f.write(struct.pack("<fffB", *[float(c) for c in v], 200))
            for p in polys:
                f.write(struct.pack("<B", len(p)) + struct.pack(f"<{len(p)}i", *[int(i) for i in p]))
            f.write(struct.pack("<ii", 0, 1))
        else:
            for v in verts:
                f.write(f"{v[0]:.9g} {v[1]:.9g} {v[2]:.9g} 200\n".encode())
            for p in polys:
                f.write((f"{len(p)} " + " ".join(str(int(i)) for i in p) + "\n").encode())
            f.write(b"0 1\n")


def write_obj(path, verts, polys) -> None:
    """Wavefront OBJ as YCB's textured models: mtllib, v, vt, then f lines ``v/vt`` (1-based)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    lines = ["mtllib textured_simple.obj.mtl", "# synthetic"]
    lines += [f"v {v[0]:.9g} {v[1]:.9g} {v[2]:.9g}" for v in verts]
    lines += [f"vt {i / max(len(verts), 1):.4f} 0.5" for i in range(len(verts))]
    lines += ["usemtl material_0"] + ["f " + " ".join(f"{i + 1}/{i + 1}" for i in p) for p in polys]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def fan(quads):
    """Quads -> the triangles a fan around each first vertex gives (the readers' triangulation)."""
    return np.array([[q[0], q[k], q[k + 1]] for q in quads for k in (1, 2)])


def write_fphab_models(root, seed: int = 0) -> dict:
    """``root``/<folder>_model/<folder>_model.ply for FPHAB's four objects (two ASCII, two binary); returns
    name -> (verts, triangles) as written (metres, model coordinates)."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, (name, folder) in enumerate(FPHAB_FOLDERS.items()):
        verts, quads = box_mesh(rng.uniform(0.04, 0.1, 3), rng.normal(0, 0.02, 3), rng, extra_vertices=k)
        write_ply(os.path.join(root, f"{folder}_model", f"{folder}_model.ply"), verts, quads, binary=k % 2 == 1)
        out[name] = (verts, fan(quads))
    return out


def write_ho3d_models(root, seed: int = 1, file_name: str = "textured_simple_2000.obj") -> dict:
    """``root``/<ycb name>/``file_name`` for HO3D's ten objects; returns name -> (verts, triangles)."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, name in enumerate(HO3D_NAMES):
        verts, quads = box_mesh(rng.uniform(0.04, 0.12, 3), rng.normal(0, 0.02, 3), rng, extra_vertices=k % 3)
        write_obj(os.path.join(root, name, file_name), verts, quads)
        out[name] = (verts, fan(quads))
    return out
