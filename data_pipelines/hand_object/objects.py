"""Procedural rigid objects of the ``hand_object`` dataset (pure numpy).

Every object is a closed surface of revolution or a star-shaped box with ONE shared
topology: a UV sphere of ``RINGS`` latitude bands and ``SEGMENTS`` longitudes (a bottom
pole, ``RINGS - 1`` rings, a top pole). Equal vertex and face counts let one jitted renderer
serve every object and let object vertices batch without padding.

Object frame (canonical mesh): metres, the long axis is +y, vertices are centred on their
bounding-box centre (handobjectconsist's ``center_vert_bbox``), and every mesh is symmetric
under x -> -x (a mirrored object is the same surface).

Textures are procedural and evaluated per pixel at the interpolated canonical point
(:func:`procedural_albedo`), so the pattern moves rigidly with the object: a 3-D checker of
two colours modulated by a smooth sinusoid.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

RINGS = 12
SEGMENTS = 20
NUM_VERTICES = (RINGS - 1) * SEGMENTS + 2
NUM_FACES = 2 * SEGMENTS * (RINGS - 1)
# Object ids are the positions in this tuple.
OBJECT_NAMES = ("box", "cylinder", "sphere", "bottle")


def uv_sphere_faces(rings: int = RINGS, segments: int = SEGMENTS) -> np.ndarray:
    """(2 * segments * (rings - 1), 3) int32 faces of the shared topology.

    Vertex 0 is the bottom pole, ring j (1..rings-1) holds vertices 1 + (j-1) * segments + k,
    the last vertex is the top pole. Faces wind counter-clockwise seen from outside
    (outward normals, +y up).
    """
    def ring(j):
        return 1 + (j - 1) * segments + np.arange(segments)

    top = 1 + (rings - 1) * segments
    faces = []
    first = ring(1)
    faces += [(0, first[k], first[(k + 1) % segments]) for k in range(segments)]
    for j in range(1, rings - 1):
        a, b = ring(j), ring(j + 1)
        for k in range(segments):
            k1 = (k + 1) % segments
            faces += [(a[k], b[k], a[k1]), (a[k1], b[k], b[k1])]
    last = ring(rings - 1)
    faces += [(top, last[(k + 1) % segments], last[k]) for k in range(segments)]
    return np.asarray(faces, np.int32)


def _revolve(radius: np.ndarray, height: np.ndarray, segments: int = SEGMENTS) -> np.ndarray:
    """Surface of revolution about +y from a profile (rings + 1,) going bottom pole -> top
    pole (radius 0 at both ends) -> (NUM_VERTICES, 3)."""
    phi = 2.0 * np.pi * np.arange(segments) / segments
    rings = [np.array([[0.0, height[0], 0.0]])]
    for r, y in zip(radius[1:-1], height[1:-1]):
        rings.append(np.stack([r * np.cos(phi), np.full(segments, y), r * np.sin(phi)], axis=1))
    rings.append(np.array([[0.0, height[-1], 0.0]]))
    return np.concatenate(rings)


def sample_polyline(points: np.ndarray, count: int) -> np.ndarray:
    """``count`` points along a polyline (P, 2) that keep every corner and spread the others
    by arc length (each segment gets at least one interval) -> (count, 2)."""
    points = np.asarray(points, np.float64)
    seg_len = np.linalg.norm(np.diff(points, axis=0), axis=1)
    n_seg = len(seg_len)
    if count - 1 < n_seg:
        raise ValueError(f"sample_polyline: {count} points cannot keep the {n_seg + 1} corners")
    # count - 1 intervals in proportion to the segment lengths (largest remainder), >= 1 each.
    ideal = (count - 1) * seg_len / seg_len.sum()
    alloc = np.maximum(np.floor(ideal).astype(int), 1)
    while alloc.sum() < count - 1:
        alloc[np.argmax(ideal - alloc)] += 1
    while alloc.sum() > count - 1:
        alloc[np.argmax(np.where(alloc > 1, alloc - ideal, -np.inf))] -= 1
    out = [points[:1]]
    for i, n in enumerate(alloc):
        t = np.arange(1, n + 1)[:, None] / n
        out.append(points[i] + t * (points[i + 1] - points[i]))
    return np.concatenate(out)


def _profile_mesh(polyline) -> np.ndarray:
    prof = sample_polyline(np.asarray(polyline, np.float64), RINGS + 1)
    return _revolve(prof[:, 0], prof[:, 1])


def _sphere(radius: float) -> np.ndarray:
    theta = np.pi * np.arange(RINGS + 1) / RINGS
    return _revolve(radius * np.sin(theta), -radius * np.cos(theta))


def _box(half: Tuple[float, float, float]) -> np.ndarray:
    """The unit UV sphere pushed radially onto the box |x| <= a, |y| <= b, |z| <= c."""
    theta = np.pi * np.arange(RINGS + 1) / RINGS
    d = _revolve(np.sin(theta), -np.cos(theta))
    scale = np.max(np.abs(d) / np.asarray(half), axis=1)
    return d / scale[:, None]


def canonical_meshes() -> Dict[str, np.ndarray]:
    """The canonical objects: names (O,) str, vertices (O, NUM_VERTICES, 3) float32
    (object frame, metres, bounding-box centred) and faces (NUM_FACES, 3) int32 (shared)."""
    meshes = [
        _box((0.03, 0.05, 0.02)),                                                   # 6 x 10 x 4 cm
        _profile_mesh([(0, -0.05), (0.03, -0.05), (0.03, 0.05), (0, 0.05)]),        # r 3 cm, 10 cm
        _sphere(0.035),
        _profile_mesh([(0, -0.08), (0.03, -0.08), (0.03, 0.02), (0.013, 0.055),   # body, shoulder,
                       (0.013, 0.08), (0, 0.08)]),                                  # neck: 16 cm
    ]
    verts = []
    for v in meshes:
        centre = (v.min(axis=0) + v.max(axis=0)) / 2.0
        verts.append(v - centre)
    return {"names": np.asarray(OBJECT_NAMES), "vertices": np.stack(verts).astype(np.float32),
            "faces": uv_sphere_faces()}


def procedural_albedo(points, color_a, color_b, cell, wave, xp=np):
    """Albedo (..., 3) in [0, 1] at canonical object points (..., 3) (numpy or jax.numpy via
    ``xp``): a 3-D checker of cell size ``cell`` (m) between ``color_a`` and ``color_b`` (3,),
    times ``1 + 0.2 sin(points . wave[:3] + wave[3])`` (wave (4,): spatial frequency vector
    in rad/m and a phase)."""
    cells = xp.floor(points / cell)
    parity = xp.mod(cells[..., 0] + cells[..., 1] + cells[..., 2], 2.0)[..., None]
    base = color_a * (1.0 - parity) + color_b * parity
    shade = 1.0 + 0.2 * xp.sin(xp.sum(points * wave[:3], axis=-1) + wave[3])[..., None]
    return xp.clip(base * shade, 0.0, 1.0)
