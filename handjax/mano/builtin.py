"""A licence-free, procedurally generated hand model in the official MANO array layout.

``builtin_mano_arrays(side)`` returns the keys, shapes and dtypes of the official
``MANO_{RIGHT,LEFT}.pkl`` (after decoding chumpy), so every MANO code path runs without
the licensed files. It is *not* MANO: the geometry, shape space, pose correctives and
pose PCA are made up here, only the layout and the vertex ids other code relies on are
MANO's:

* 778 vertices, 1538 faces, a disk-topology surface whose single open boundary is the
  16-vertex wrist loop ``WRIST_BOUNDARY_IDS`` (in that cyclic order), like MANO;
* the fingertip vertex ids of manopth, smplx, FreiHAND and TempCLR (``TIP_VERTEX_IDS``)
  lie on the tip caps of the matching fingers;
* MANO's 16-joint kinematic tree and joint order (wrist, index1-3, middle1-3,
  pinky1-3, ring1-3, thumb1-3);
* remaining vertex ids follow MANO's per-part id ranges (DIGIT's part table) as far as
  the part sizes allow, so id-based part lists are roughly right.

Frame of the right hand (rest pose, metres, right-handed axes):
  +x  wrist -> fingertips; the wrist joint is (within a millimetre) at the origin,
  +y  the palm normal: the palm faces +y, the back of the hand faces -y,
  +z  the radial side: the thumb lies towards +z.
A right hand is anatomically correct in this frame. (As far as known here, MANO's own
right template is this frame turned by 180 degrees about z: fingers along -x, palm facing
-y, thumb towards +z; a palm facing -y with fingers along +x and thumb at +z would be a
left hand.) Like MANO's, the faces run the wrist loop against the listed order of
WRIST_BOUNDARY_IDS, so published MANO wrist caps close this mesh too.
Flexion (curling towards the palm) is a positive rotation about each chain's lateral axis
(~ +z for the fingers), as in MANO.

Left hand = mirror image of the right one under M = diag(-1, 1, 1):
  * v_template, J: x -> -x;
  * shapedirs: x-component negated (the left shape space is the mirrored right one);
  * posedirs[v, c, 9 * (j - 1) + 3 * r + k] *= m_c * m_r * m_k with m = (-1, 1, 1), so that
    posing the left model with R' = M R M gives the mirrored corrective of R;
  * hands_mean and hands_components: each joint's axis-angle (w0, w1, w2) -> (w0, -w1, -w2)
    (M R(w) M = R(-M w)); hands_coeffs, weights, J_regressor, kintree_table unchanged;
  * f: winding reversed ([0, 2, 1]) so that normals still point outwards.

Shape space (beta i, positive = more): the generator's derivatives w.r.t. overall scale,
finger length, palm width, thickness, thumb length, palm length, finger girth, finger
spread, index-vs-ring length and wrist size, Gram-Schmidt orthogonalised in that order
and scaled to 5.5 .. 2 mm largest vertex displacement per unit beta. Pose correctives
bulge the skin around each bent joint (see _pose_correctives). Pose PCA: whole-hand curl,
spread, per-finger curls, hook grip, thumb opposition/abduction, then a completion.

Construction: a palm tube of seven cross-section rings (superellipses) from the open wrist
loop to the knuckles, split once for the thumb and once into the four fingers (small
two-triangle "web" patches close the crotches); each finger/thumb is a tube of 12-vertex
rings ending in a rounded cap (a 6-vertex ring and an apex).
"""
from __future__ import annotations

import functools
from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np

__all__ = [
    "NUM_VERTICES", "NUM_FACES", "NUM_JOINTS", "JOINT_NAMES", "MANO_PARENTS",
    "ROOT_PARENT_SENTINEL", "WRIST_BOUNDARY_IDS", "TIP_VERTEX_IDS", "DIGIT_JOINT_TO_PART",
    "builtin_mano_arrays", "face_part_labels",
]

NUM_VERTICES = 778
NUM_FACES = 1538
NUM_JOINTS = 16
NUM_BETAS = 10
JOINT_NAMES = (
    "wrist", "index1", "index2", "index3", "middle1", "middle2", "middle3",
    "pinky1", "pinky2", "pinky3", "ring1", "ring2", "ring3", "thumb1", "thumb2", "thumb3",
)
MANO_PARENTS = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14)
# The official pickle stores the root's parent as uint32 max inside an int64 table.
ROOT_PARENT_SENTINEL = 4294967295

# MANO's wrist-boundary loop, in loop order (DIGIT's "seal" uses these ids).
WRIST_BOUNDARY_IDS = (108, 79, 78, 121, 214, 215, 279, 239, 234, 92, 38, 122, 118, 117, 119, 120)
# Fingertip vertex ids used by manopth / smplx / FreiHAND / TempCLR, all on the tip caps.
TIP_VERTEX_IDS: Dict[str, Tuple[int, ...]] = {
    "thumb": (720, 744, 745),
    "index": (317, 318, 320),
    "middle": (443, 444, 445),
    "ring": (554, 555, 556),
    "pinky": (671, 672, 673),
}
# DIGIT's 16-part face labels: index = MANO joint (order above), value = part label (8 = palm).
DIGIT_JOINT_TO_PART = (8, 10, 1, 11, 3, 14, 4, 2, 13, 6, 0, 15, 5, 7, 9, 12)

# MANO vertex ids of each DIGIT part (from DIGIT's vertex segmentation; label 8 = the rest).
# Used only to lay out the non-landmark vertex ids like MANO's.
_MANO_PART_ID_RANGES: Dict[int, Tuple[Tuple[int, int], ...]] = {
    0: ((162, 163), (198, 198), (247, 247), (291, 293), (474, 475), (477, 481), (484, 485),
        (488, 498), (509, 510), (579, 579)),
    1: ((46, 47), (56, 57), (86, 86), (155, 155), (221, 224), (226, 226), (237, 238), (245, 245),
        (272, 273), (280, 283), (294, 301), (340, 341)),
    2: ((161, 161), (590, 593), (596, 597), (600, 601), (606, 616), (627, 627)),
    3: ((185, 185), (246, 246), (262, 262), (277, 277), (366, 371), (374, 375), (378, 388),
        (399, 399)),
    4: ((414, 429), (431, 451), (454, 467)),
    5: ((517, 578),),
    6: ((634, 695),),
    7: ((2, 11), (14, 14), (29, 30), (40, 43), (88, 89), (105, 105), (115, 115), (123, 123),
        (126, 126), (230, 231), (233, 233), (236, 236), (240, 240), (248, 248), (252, 253),
        (266, 266), (286, 286)),
    9: ((28, 28), (31, 31), (104, 104), (124, 125), (249, 251), (267, 267), (287, 287),
        (697, 706)),
    10: ((48, 49), (58, 59), (87, 87), (133, 137), (139, 140), (156, 156), (164, 167),
         (170, 177), (186, 186), (189, 189), (194, 195), (212, 213), (225, 225), (258, 258),
         (260, 261), (263, 263), (274, 274)),
    11: ((302, 339), (342, 355)),
    12: ((707, 768),),
    13: ((580, 589), (598, 599), (602, 603), (617, 626), (628, 633)),
    14: ((356, 365), (372, 373), (376, 377), (389, 398), (400, 413), (430, 430), (452, 453)),
    15: ((468, 473), (476, 476), (482, 483), (486, 487), (499, 508), (511, 516)),
}
_PALM_PART = 8

# ----------------------------------------------------------------------------- geometry spec
# All lengths below are in centimetres; the output is converted to metres.
_CM = 0.01
_TUBE_RING = 12          # vertices per finger / thumb ring
_CAP_RING = 6            # vertices of the small ring before each fingertip apex


class _PalmStation(NamedTuple):
    """One palm cross-section: a superellipse in the (z, y) plane at height x.

    half_w / half_t: half extents along z (width) and y (thickness); centre_z: its centre;
    exponent: superellipse exponent (2 = ellipse, larger = boxier); thenar / hypothenar:
    palmar bulges (cm, along +y) centred at 45 and 135 degrees of the palm angle.
    """
    x: float
    n: int
    half_w: float
    half_t: float
    centre_z: float
    exponent: float
    thenar: float
    hypothenar: float


# Wrist (open boundary) -> knuckles. Station 3 is where the thumb splits off.
_PALM = (
    _PalmStation(-0.8, 16, 2.90, 1.85, 0.00, 2.2, 0.00, 0.00),
    _PalmStation(0.9, 21, 3.30, 1.75, 0.15, 2.4, 0.30, 0.20),
    _PalmStation(2.6, 28, 3.95, 1.65, 0.40, 2.6, 0.50, 0.30),
    _PalmStation(4.4, 36, 4.70, 1.55, 0.60, 2.8, 0.35, 0.30),
    _PalmStation(5.9, 36, 3.65, 1.45, -0.32, 3.0, 0.10, 0.25),
    _PalmStation(7.2, 42, 3.85, 1.35, -0.30, 3.0, 0.00, 0.15),
)
_THUMB_SPLIT_STATION = 3
_THUMB_BLOCK = 10                   # vertices of the split ring that leave with the thumb
_WRIST_JOINT_STATIONS = (0, 1)      # the wrist joint is the mean of these two rings
_THUMB1_STATION = 2                 # thumb1 = mean of this ring's radial part: the vertices ...
_THUMB1_MIN_LATERAL = 0.35          # ... whose z offset from the ring centroid exceeds this x max


class _ChainSpec(NamedTuple):
    """A finger: straight tube from its knuckle along yaw (degrees, towards +z).

    lengths: MCP->PIP, PIP->DIP, DIP->apex; radius_base / radius_tip: (lateral, palmar) half
    extents of the cross-section at the knuckle and at the tip; rings: tube rings per segment
    (the last segment's rings end at the cap's equator).
    """
    name: str
    chain: int
    base_x: float
    base_z: float
    yaw_deg: float
    lengths: Tuple[float, float, float]
    radius_base: Tuple[float, float]
    radius_tip: Tuple[float, float]
    rings: Tuple[int, int, int]


# Chains are numbered in MANO's joint order: chain c drives joints 1 + 3c, 2 + 3c, 3 + 3c.
_CHAIN_NAMES = ("index", "middle", "pinky", "ring", "thumb")
_THUMB_CHAIN = 4
_FINGERS = (  # radial -> ulnar across the knuckles
    _ChainSpec("index", 0, 9.0, 2.60, 4.0, (3.9, 2.3, 2.1), (0.97, 0.95), (0.78, 0.68), (4, 2, 3)),
    _ChainSpec("middle", 1, 9.4, 0.55, 0.0, (4.3, 2.7, 2.3), (1.00, 0.97), (0.80, 0.70), (4, 2, 3)),
    _ChainSpec("ring", 3, 8.9, -1.45, -4.0, (4.0, 2.6, 2.2), (0.93, 0.90), (0.76, 0.66), (4, 2, 3)),
    _ChainSpec("pinky", 2, 8.0, -3.32, -9.0, (3.2, 1.9, 1.9), (0.83, 0.80), (0.68, 0.60), (3, 2, 2)),
)
# Thumb: a tube leaving the palm's radial side at the split station along _THUMB_DIR.
# Stations (from the split): thumb2 (MCP), thumb3 (IP), apex.
_THUMB_DIR = (0.65, 0.22, 0.73)
_THUMB_PAD_REF = (0.0, 0.55, -0.835)     # the thumb pad faces the index finger and the palm side
_THUMB_STATIONS = (1.5, 4.4, 6.9)
_THUMB_RADII = ((1.45, 1.30), (1.15, 1.05), (1.05, 0.95), (0.95, 0.82))  # split, MCP, IP, tip
_THUMB_RINGS = (2, 4, 3)
_JOINT_BULGE = 0.05          # finger rings swell by 5 % at PIP / DIP
_JOINT_BULGE_WIDTH = 0.45    # cm
_GIRTH_RAMP = 1.5            # cm over which the girth knob fades in from each chain's base

# Skinning blend half-widths (cm) at the first, second and third joint of each chain.
_BLEND_FINGER = (1.2, 0.5, 0.45)
_BLEND_THUMB = (1.0, 0.6, 0.5)
_THUMB_AFFINITY = (1.6, 0.8)  # palm vertices within 1.6 +- 0.8 cm of the thumb axis follow it

# Pose correctives: metres per unit of tr(R - I) (bulge) and of sin(flexion) (palmar bulge).
_POSE_BULGE = 0.0015
_POSE_FLEX = 0.0012

# Shape knobs (multiplicative unless noted) whose generator derivatives give the shapedirs.
_SHAPE_KNOBS = (
    "scale", "finger_length", "palm_width", "thickness", "thumb_length",
    "palm_length", "finger_girth", "finger_spread", "index_vs_ring", "wrist_size",
)
# Largest vertex displacement (m) per unit beta of each orthogonalised direction.
_SHAPE_MAX_DISP = (0.0055, 0.0045, 0.0040, 0.0035, 0.0035, 0.0030, 0.0030, 0.0025, 0.0025, 0.0020)
_FD_STEP = 1e-4

_NUM_PCA_SAMPLES = 1554
_PCA_SEED = 20240607


# ----------------------------------------------------------------------------- small helpers
def _smoothstep(u: np.ndarray) -> np.ndarray:
    """C1 step from 0 (u <= -1) to 1 (u >= 1)."""
    t = np.clip((u + 1.0) * 0.5, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _chain_frame(direction: np.ndarray, pad_ref: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Orthonormal (t, lat, pal) with t = direction, pal ~ pad_ref, lat = t x pal.

    Ring angles run from lat (0) towards pal (90 degrees); lat x pal = -t, so rings listed
    by increasing angle wind clockwise seen from the tip. lat is also the flexion axis:
    a positive rotation about lat turns t towards pal.
    """
    t = _unit(direction)
    pal = _unit(pad_ref - np.dot(pad_ref, t) * t)
    return t, np.cross(t, pal), pal


def _tube_ring(centre, lat, pal, r_lat, r_pal, n) -> np.ndarray:
    """(n, 3) points of an ellipse around centre at angles 2 pi (i + 1/2) / n from lat to pal."""
    theta = 2.0 * np.pi * (np.arange(n) + 0.5) / n
    return (np.asarray(centre)[None] + (r_lat * np.cos(theta))[:, None] * lat[None]
            + (r_pal * np.sin(theta))[:, None] * pal[None])


def _palm_curve(theta: np.ndarray, st: _PalmStation, width: float, thick: float,
                centre_z: float, x: float) -> np.ndarray:
    """Palm cross-section points at palm angles theta (0 = +z radial, 90 deg = +y palmar)."""
    c, s = np.cos(theta), np.sin(theta)
    p = 2.0 / st.exponent
    z = centre_z + width * np.sign(c) * np.abs(c) ** p
    y = thick * np.sign(s) * np.abs(s) ** p
    bump = lambda mu: np.exp(-(np.angle(np.exp(1j * (theta - mu))) / 0.5) ** 2)  # noqa: E731
    y = y + st.thenar * bump(np.pi / 4) + st.hypothenar * bump(3 * np.pi / 4)
    return np.stack([np.full_like(theta, x), y, z], axis=-1)


def _arc_length_angles(st: _PalmStation) -> np.ndarray:
    """Palm angles of st.n points equally spaced in arc length, half a step after angle 0."""
    dense = np.linspace(0.0, 2.0 * np.pi, 2049)
    pts = _palm_curve(dense, st, st.half_w, st.half_t, st.centre_z, st.x)
    cum = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    target = (np.arange(st.n) + 0.5) / st.n * cum[-1]
    return np.interp(target, cum, dense)


def _ring_params(points: np.ndarray, lat: np.ndarray, pal: np.ndarray) -> np.ndarray:
    """Stitching parameter in [0, 2 pi) of a closed ring listed by increasing angle.

    The normalised arc length along the ring, measured from where the ring crosses the
    lat axis (pal coordinate going from negative to positive on the +lat side). Unlike
    the polar angle this is monotonic for scalloped or flat rings too.
    """
    d = points - points.mean(axis=0)
    a, b = d @ lat, d @ pal
    nxt = np.roll(np.arange(len(points)), -1)
    seg = np.linalg.norm(points[nxt] - points, axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    crosses = (b < 0) & (b[nxt] >= 0)
    frac = np.where(crosses, -b / np.where(crosses, b[nxt] - b, 1.0), 0.0)
    a_cross = a + frac * (a[nxt] - a)
    candidates = np.flatnonzero(crosses & (a_cross > 0))
    if len(candidates) == 0:
        raise AssertionError("builtin hand: ring does not cross its lateral axis (bad geometry spec)")
    i = candidates[np.argmax(a_cross[candidates])]
    origin = cum[i] + frac[i] * seg[i]
    return 2 * np.pi * np.mod(cum[:-1] - origin, cum[-1]) / cum[-1]


# ----------------------------------------------------------------------------- mesh building
class _Builder:
    """Accumulates vertices (with their chain / axial coordinate) and outward-facing faces."""

    def __init__(self, with_faces: bool = True) -> None:
        self.with_faces = with_faces   # False: positions only (shape finite differences)
        self._points: List[np.ndarray] = []
        self._chain: List[np.ndarray] = []
        self._axial: List[np.ndarray] = []
        self.faces: List[Tuple[int, int, int]] = []
        self.count = 0

    def add(self, points: np.ndarray, chain: int, axial) -> np.ndarray:
        """Append points (n, 3); chain -1 = palm; axial = distance along the chain (cm)."""
        points = np.atleast_2d(points)
        n = len(points)
        self._points.append(points)
        self._chain.append(np.full(n, chain, dtype=np.int64))
        self._axial.append(np.broadcast_to(np.asarray(axial, dtype=np.float64), (n,)).copy())
        ids = np.arange(self.count, self.count + n)
        self.count += n
        return ids

    def arrays(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (np.concatenate(self._points), np.concatenate(self._chain),
                np.concatenate(self._axial))

    def points_of(self, ids: np.ndarray) -> np.ndarray:
        """Positions of already-added vertices."""
        return np.concatenate(self._points)[ids]

    def stitch(self, ring_a: np.ndarray, ring_b: np.ndarray, lat: np.ndarray,
               pal: np.ndarray) -> None:
        """Triangulate the band between ring_a and the next ring_b (further along the tube).

        Both rings are listed by increasing angle in the (lat, pal) plane (the tube
        convention of _chain_frame); the band gets len(a) + len(b) triangles, merged by
        the rings' arc-length parameters (_ring_params).
        """
        if not self.with_faces:
            return
        a_ids, a_ang = _start_at_zero(ring_a, _ring_params(self.points_of(ring_a), lat, pal))
        b_ids, b_ang = _start_at_zero(ring_b, _ring_params(self.points_of(ring_b), lat, pal))
        na, nb = len(a_ids), len(b_ids)
        a_next = np.append(a_ang, a_ang[0] + 2 * np.pi)
        b_next = np.append(b_ang, b_ang[0] + 2 * np.pi)
        i = j = 0
        while i < na or j < nb:
            if j == nb or (i < na and a_next[i + 1] <= b_next[j + 1]):
                self.faces.append((a_ids[i], b_ids[j % nb], a_ids[(i + 1) % na]))
                i += 1
            else:
                self.faces.append((a_ids[i % na], b_ids[j], b_ids[(j + 1) % nb]))
                j += 1

    def fan(self, ring: np.ndarray, apex: int) -> None:
        """Close ring (increasing angle) with triangles to an apex further along the tube."""
        for i in range(len(ring)):
            self.faces.append((ring[i], apex, ring[(i + 1) % len(ring)]))

    def web(self, dorsal_radial: int, dorsal_ulnar: int, palmar_ulnar: int,
            palmar_radial: int) -> None:
        """Quad closing the crotch between two tubes split from one ring (faces distally)."""
        self.faces.append((dorsal_radial, dorsal_ulnar, palmar_ulnar))
        self.faces.append((dorsal_radial, palmar_ulnar, palmar_radial))


def _start_at_zero(ids: np.ndarray, ang: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Rotate a ring to start at its smallest angle in [0, 2 pi) and unwrap the angles."""
    ang = np.mod(ang, 2 * np.pi)
    k = int(np.argmin(ang))
    ids, ang = np.roll(ids, -k), np.roll(ang, -k)
    steps = np.diff(ang)
    if np.any(steps <= 0):
        raise AssertionError("builtin hand: ring angles are not monotonic (bad geometry spec)")
    return ids, ang


class _Construction(NamedTuple):
    """One run of the generator, vertices in generation order."""
    points: np.ndarray        # (V, 3) cm
    chain: np.ndarray         # (V,) -1 palm, else chain id
    axial: np.ndarray         # (V,) cm along the chain (0 at its base ring), nan on the palm
    faces: np.ndarray         # (F, 3)
    rings: Dict[str, np.ndarray]
    frames: Dict[int, Tuple[np.ndarray, np.ndarray, np.ndarray]]
    chain_lengths: Dict[int, Tuple[float, float, float]]
    thumb_base: np.ndarray    # centroid of the thumb's base loop (cm)
    palm_angles: Tuple[np.ndarray, ...]


def _knob_values(knobs: np.ndarray) -> Dict[str, float]:
    return dict(zip(_SHAPE_KNOBS, np.asarray(knobs, dtype=np.float64)))


_Z_AXIS, _Y_AXIS = np.array([0.0, 0.0, 1.0]), np.array([0.0, 1.0, 0.0])


def _construct(knobs: np.ndarray, palm_angles: Optional[Tuple[np.ndarray, ...]] = None) -> _Construction:
    """Build the right hand for shape knobs (zeros = template), in cm, generation order.

    palm_angles: the palm rings' vertex angles; None computes them (equal arc length) and
    builds the faces. Passing the template's angles keeps every vertex at the same curve
    parameter, so finite differences over knobs give smooth shape directions; faces are
    then skipped (the topology is the template's).
    """
    k = _knob_values(knobs)
    b = _Builder(with_faces=palm_angles is None)
    if palm_angles is None:
        palm_angles = tuple(_arc_length_angles(st) for st in _PALM)
    rings: Dict[str, np.ndarray] = {}
    frames: Dict[int, Tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    lengths: Dict[int, Tuple[float, float, float]] = {}
    palm_ids = _add_palm(b, k, palm_angles, rings)
    thumb_loop = _split_thumb(b, palm_ids)
    base_loops = [_add_finger(b, k, spec, rings, frames, lengths) for spec in _FINGERS]
    _join_knuckles(b, palm_ids[-1], base_loops, rings)
    thumb_base = _add_thumb(b, k, thumb_loop, rings, frames, lengths)

    points, chain, axial = b.arrays()
    chain[thumb_loop] = _THUMB_CHAIN   # the split ring's radial block is the thumb's base
    axial[thumb_loop] = 0.0
    scale = 1 + k["scale"]
    return _Construction(points * scale, chain, axial, np.asarray(b.faces, dtype=np.int64), rings,
                         frames, lengths, thumb_base * scale, palm_angles)


def _add_palm(b: _Builder, k: Dict[str, float], palm_angles, rings) -> List[np.ndarray]:
    """Palm rings (wrist loop .. last ring before the knuckles), stitched up to the split.

    Records rings 'wrist', 'palm<i>' (the wrist joint's rings) and 'thumb1' (the radial
    part of ring _THUMB1_STATION: lateral coordinate above _THUMB1_MIN_LATERAL of its max).
    """
    width_gain = (0.0, 0.3, 0.7, 1.0, 1.0, 1.0)   # palm_width knob, per station
    wrist_gain = (1.0, 1.0, 0.5, 0.0, 0.0, 0.0)   # wrist_size knob, per station
    palm_ids, palm_pts = [], []
    for i, (st, theta) in enumerate(zip(_PALM, palm_angles)):
        w_scale = (1 + k["palm_width"] * width_gain[i]) * (1 + k["wrist_size"] * wrist_gain[i])
        t_scale = (1 + k["thickness"]) * (1 + k["wrist_size"] * wrist_gain[i])
        pts = _palm_curve(theta, st, st.half_w * w_scale, st.half_t * t_scale,
                          st.centre_z * (1 + k["palm_width"]), st.x * (1 + k["palm_length"]))
        palm_pts.append(pts)
        palm_ids.append(b.add(pts, -1, np.nan))
    for i in range(_THUMB_SPLIT_STATION):
        b.stitch(palm_ids[i], palm_ids[i + 1], _Z_AXIS, _Y_AXIS)
    rings["wrist"] = palm_ids[0]
    for i in _WRIST_JOINT_STATIONS:
        rings[f"palm{i}"] = palm_ids[i]
    lateral = palm_pts[_THUMB1_STATION][:, 2] - palm_pts[_THUMB1_STATION][:, 2].mean()
    rings["thumb1"] = palm_ids[_THUMB1_STATION][lateral > _THUMB1_MIN_LATERAL * lateral.max()]
    return palm_ids


def _split_thumb(b: _Builder, palm_ids: List[np.ndarray]) -> np.ndarray:
    """Split the thumb's block off the split ring; stitch the rest of the palm. Returns the
    thumb's base loop (the _THUMB_BLOCK split-ring vertices centred on the radial side)."""
    s_ids = palm_ids[_THUMB_SPLIT_STATION]
    n_s, half = len(s_ids), _THUMB_BLOCK // 2
    thumb_loop = s_ids[np.r_[n_s - half:n_s, 0:half]]
    main_loop = s_ids[half:n_s - half]
    b.web(thumb_loop[0], main_loop[-1], main_loop[0], thumb_loop[-1])
    prev = main_loop
    for ids in palm_ids[_THUMB_SPLIT_STATION + 1:]:
        b.stitch(prev, ids, _Z_AXIS, _Y_AXIS)
        prev = ids
    return thumb_loop


def _add_finger(b: _Builder, k: Dict[str, float], spec: _ChainSpec, rings, frames,
                lengths) -> np.ndarray:
    """One finger tube from its knuckle ring to the tip; returns its base (knuckle) loop."""
    ratio = {"index": 1 + k["index_vs_ring"], "ring": 1 - k["index_vs_ring"],
             "pinky": 1 - 0.5 * k["index_vs_ring"], "middle": 1.0}[spec.name]
    yaw = np.deg2rad(spec.yaw_deg) * (1 + k["finger_spread"])
    frame = _chain_frame(np.array([np.cos(yaw), 0.0, np.sin(yaw)]), _Y_AXIS)
    seg = tuple(L * (1 + k["finger_length"]) * ratio for L in spec.lengths)
    frames[spec.chain], lengths[spec.chain] = frame, seg
    r0, r1 = np.array(spec.radius_base), np.array(spec.radius_tip)
    base = np.array([spec.base_x * (1 + k["palm_length"]), 0.0, spec.base_z * (1 + k["palm_width"])])

    def radius(s):
        r = r0 + (r1 - r0) * min(max(s / sum(seg), 0.0), 1.0)
        swell = sum(np.exp(-((s - j) / _JOINT_BULGE_WIDTH) ** 2) for j in (seg[0], seg[0] + seg[1]))
        return r * (1 + _JOINT_BULGE * swell) * _radius_gain(s, k, 1 + k["palm_width"], 1 + k["thickness"])

    return _add_tube(b, spec.chain, base, frame, seg, radius, spec.rings, rings,
                     base_loop=None, tip_radius=min(radius(sum(seg))))


def _join_knuckles(b: _Builder, last_palm: np.ndarray, base_loops: List[np.ndarray], rings) -> None:
    """Stitch the last palm ring to the four finger base loops and close the crotches.

    The knuckle ring lists the palmar halves radial -> ulnar, then the dorsal halves
    ulnar -> radial (increasing palm angle); neighbouring loops are joined by web patches.
    """
    half = _TUBE_RING // 2
    knuckle = np.concatenate([loop[:half] for loop in base_loops]
                             + [loop[half:] for loop in base_loops[::-1]])
    rings["knuckle"] = knuckle
    b.stitch(last_palm, knuckle, _Z_AXIS, _Y_AXIS)
    for radial, ulnar in zip(base_loops[:-1], base_loops[1:]):
        b.web(radial[half], ulnar[-1], ulnar[0], radial[half - 1])


def _add_thumb(b: _Builder, k: Dict[str, float], thumb_loop: np.ndarray, rings, frames,
               lengths) -> np.ndarray:
    """The thumb tube from its base loop along _THUMB_DIR; returns the loop's centroid."""
    t, lat, pal = _chain_frame(np.asarray(_THUMB_DIR), np.asarray(_THUMB_PAD_REF))
    thumb_base = b.points_of(thumb_loop).mean(axis=0)
    knots = np.concatenate([[0.0], np.asarray(_THUMB_STATIONS) * (1 + k["thumb_length"])])
    seg = tuple(np.diff(knots))
    frames[_THUMB_CHAIN], lengths[_THUMB_CHAIN] = (t, lat, pal), seg
    radii = np.array(_THUMB_RADII)

    def radius(s):
        r = np.array([np.interp(s, knots, radii[:, 0]), np.interp(s, knots, radii[:, 1])])
        return r * _radius_gain(s, k, 1.0, 1.0)

    _add_tube(b, _THUMB_CHAIN, thumb_base, (t, lat, pal), seg, radius, _THUMB_RINGS, rings,
              base_loop=thumb_loop, tip_radius=min(radius(knots[-1])))
    return thumb_base


def _radius_gain(s: float, k: Dict[str, float], base_lateral: float,
                 base_palmar: float) -> np.ndarray:
    """(lateral, palmar) factors on a chain's radii at axial s for shape knobs k.

    Girth and thickness act fully from _GIRTH_RAMP cm beyond the chain's base ring; at the
    base the radii follow the palm instead (base_lateral / base_palmar: the fingers' bases
    follow the palm width and thickness; the thumb's base loop is a piece of the palm), so
    neighbouring finger bases keep their spacing and the thin crotch patches never fold.
    """
    ramp = float(_smoothstep(np.asarray(2.0 * s / _GIRTH_RAMP - 1.0)))
    girth, thick = 1 + k["finger_girth"], 1 + k["thickness"]
    return np.array([girth * ramp + base_lateral * (1 - ramp),
                     girth * thick * ramp + base_palmar * (1 - ramp)])


def _add_tube(b: _Builder, chain: int, base: np.ndarray, frame, seg, radius, counts, rings,
              base_loop, tip_radius: float) -> np.ndarray:
    """Add a chain's tube: base loop, rings per segment, and the rounded cap.

    base_loop: ids of an existing loop, or None to create the ring at s = 0.
    Records rings[f"{chain}:j1|j2|j3"] (joint rings; j1 = base loop) and the cap/apex ids.
    Returns the base loop ids.
    """
    t, lat, pal = frame
    if base_loop is None:
        loop_ids = b.add(_tube_ring(base, lat, pal, *radius(0.0), _TUBE_RING), chain, 0.0)
    else:
        loop_ids = base_loop
    rings[f"{chain}:j1"] = loop_ids
    total = sum(seg)
    equator = total - tip_radius
    knots = (0.0, seg[0], seg[0] + seg[1], equator)
    stations = np.concatenate([np.linspace(knots[i], knots[i + 1], counts[i] + 1)[1:]
                               for i in range(3)])
    prev_ids = loop_ids
    for s in stations:
        ids = b.add(_tube_ring(base + s * t, lat, pal, *radius(s), _TUBE_RING), chain, s)
        b.stitch(prev_ids, ids, lat, pal)
        prev_ids = ids
        if np.isclose(s, knots[1]):
            rings[f"{chain}:j2"] = ids
        if np.isclose(s, knots[2]):
            rings[f"{chain}:j3"] = ids
    # rounded cap: a sphere-like dome of radius tip_radius beyond the equator
    r_eq = radius(equator)
    s_cap = total - 0.3 * tip_radius
    shrink = np.sqrt(1 - 0.7 ** 2)
    cap = b.add(_tube_ring(base + s_cap * t, lat, pal, *(r_eq * shrink), _CAP_RING), chain, s_cap)
    b.stitch(prev_ids, cap, lat, pal)
    apex = b.add(base + total * t, chain, total)[0]
    b.fan(cap, apex)
    rings[f"{chain}:cap"] = cap
    rings[f"{chain}:apex"] = np.array([apex])
    return loop_ids


# ----------------------------------------------------------------------------- skinning
def _chain_blend(s: np.ndarray, bounds, widths) -> np.ndarray:
    """Weights (n, 4) of (parent of joint 1, joint 1, joint 2, joint 3) along a chain.

    Smooth telescoping steps h_i = S((s - b_i) / w_i) (forced non-increasing in i), so the
    weights are non-negative and sum to 1: [1 - h1, h1 - h2, h2 - h3, h3].
    """
    h = np.stack([_smoothstep((s - b) / w) for b, w in zip(bounds, widths)], axis=-1)
    h = np.minimum.accumulate(h, axis=-1)
    return np.concatenate([1 - h[:, :1], h[:, :-1] - h[:, 1:], h[:, -1:]], axis=-1)


def _chain_joints(chain: int) -> np.ndarray:
    return np.array([0, 1 + 3 * chain, 2 + 3 * chain, 3 + 3 * chain])


def _hat_weights(z: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """Piecewise-linear partition of unity over increasing knots (clamped ends). (n, K)."""
    out = np.zeros((len(z), len(knots)))
    zc = np.clip(z, knots[0], knots[-1])
    seg = np.clip(np.searchsorted(knots, zc, side="right") - 1, 0, len(knots) - 2)
    t = (zc - knots[seg]) / (knots[seg + 1] - knots[seg])
    out[np.arange(len(z)), seg] = 1 - t
    out[np.arange(len(z)), seg + 1] += t
    return out


def _skinning_weights(con: _Construction, thumb1: np.ndarray) -> np.ndarray:
    """LBS weights (V, 16), generation order, from the template construction (cm).

    Chain vertices blend along their axial coordinate across the chain's joints; the
    first joint's boundary is the chain's base ring (knuckle ring / thumb split ring),
    where the weights are half parent, half joint. Palm vertices follow the wrist,
    blending into each finger's first joint near its knuckle (split between neighbouring
    fingers by a hat function across the knuckle line) and into thumb1 near the thumb's
    metacarpal axis (thumb1 -> thumb base loop).
    """
    pts, chain, axial = con.points, con.chain, con.axial
    W = np.zeros((len(pts), NUM_JOINTS))

    def bounds(c):
        L = con.chain_lengths[c]
        return (0.0, L[0], L[0] + L[1])

    for spec in _FINGERS:
        sel = chain == spec.chain
        W[np.ix_(sel, _chain_joints(spec.chain))] += _chain_blend(axial[sel], bounds(spec.chain), _BLEND_FINGER)

    # thumb axis through the palm: thumb1 -> centroid of the thumb's base loop
    u0 = _unit(con.thumb_base - thumb1)
    b_thumb = bounds(_THUMB_CHAIN)
    sel = chain == _THUMB_CHAIN
    W[np.ix_(sel, _chain_joints(_THUMB_CHAIN))] += _chain_blend(axial[sel], b_thumb, _BLEND_THUMB)

    palm = np.flatnonzero(chain < 0)
    p = pts[palm]
    rel = p - thumb1
    rho = np.linalg.norm(rel - np.outer(rel @ u0, u0), axis=1)
    a_thumb = 1 - _smoothstep((rho - _THUMB_AFFINITY[0]) / _THUMB_AFFINITY[1])
    W[np.ix_(palm, _chain_joints(_THUMB_CHAIN))] += a_thumb[:, None] * _chain_blend(
        (p - con.thumb_base) @ u0, b_thumb, _BLEND_THUMB)
    order = np.argsort([spec.base_z for spec in _FINGERS])
    knots = np.array([_FINGERS[i].base_z for i in order])
    affinity = _hat_weights(p[:, 2], knots)
    for col, i in enumerate(order):
        spec = _FINGERS[i]
        a = (1 - a_thumb) * affinity[:, col]
        W[np.ix_(palm, _chain_joints(spec.chain))] += a[:, None] * _chain_blend(
            p[:, 0] - spec.base_x, bounds(spec.chain), _BLEND_FINGER)
    return W


def _joint_regressor(con: _Construction, n: int) -> np.ndarray:
    """(16, V) rows = uniform averages over the ring(s) of vertices around each joint."""
    R = np.zeros((NUM_JOINTS, n))
    for i in _WRIST_JOINT_STATIONS:
        ids = con.rings[f"palm{i}"]
        R[0, ids] += 1.0 / (len(ids) * len(_WRIST_JOINT_STATIONS))
    for c in range(len(_CHAIN_NAMES)):
        for level in (1, 2, 3):
            ids = con.rings["thumb1"] if (c == _THUMB_CHAIN and level == 1) else con.rings[f"{c}:j{level}"]
            R[level + 3 * c, ids] = 1.0 / len(ids)
    return R


# ----------------------------------------------------------------------------- correctives
def _vertex_normals(points: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals (outward for outward-wound faces)."""
    tri = points[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    vn = np.zeros_like(points)
    for corner in range(3):
        np.add.at(vn, faces[:, corner], fn)
    return vn / np.linalg.norm(vn, axis=1, keepdims=True)


def _pose_correctives(normals: np.ndarray, weights: np.ndarray, frames) -> np.ndarray:
    """posedirs (V, 3, 135), entry 9 (j - 1) + 3 r + k multiplies (R_j - I)[r, k].

    Around joint j (where its parent's and its own weights overlap, g = 4 w_parent w_j):
    * a volume-keeping bulge along the normal, -_POSE_BULGE g n per unit of tr(R_j - I)
      (tr(R - I) = 2 (cos a - 1), so every rotation pushes the skin out by 2 B g (1 - cos a));
    * a flexion term _POSE_FLEX g (n . pal) n per unit of sin(flexion): the palmar side,
      squeezed by the bend, swells; the dorsal side thins. sin(flexion) = lat . axis(R),
      axis(R) = (R21 - R12, R02 - R20, R10 - R01) / 2, lat/pal from the chain's frame.
    """
    V = len(normals)
    P = np.zeros((V, 3, 9 * (NUM_JOINTS - 1)))
    for j in range(1, NUM_JOINTS):
        chain = (j - 1) // 3
        _, lat, pal = frames[chain]
        g = np.clip(4 * weights[:, MANO_PARENTS[j]] * weights[:, j], 0.0, 1.0)
        block = np.zeros((V, 3, 9))
        for e in (0, 4, 8):
            block[:, :, e] = -_POSE_BULGE * g[:, None] * normals
        flex = np.zeros(9)
        flex[7], flex[5] = lat[0] / 2, -lat[0] / 2   # (2,1), (1,2)
        flex[2], flex[6] = lat[1] / 2, -lat[1] / 2   # (0,2), (2,0)
        flex[3], flex[1] = lat[2] / 2, -lat[2] / 2   # (1,0), (0,1)
        field = _POSE_FLEX * (g * (normals @ pal))[:, None] * normals
        block += field[:, :, None] * flex[None, None, :]
        P[:, :, 9 * (j - 1):9 * j] = block
    return P


# ----------------------------------------------------------------------------- shape space
def _gram_schmidt(vectors: np.ndarray) -> np.ndarray:
    """Orthonormalise rows in order (modified Gram-Schmidt, two passes). Drops none."""
    out = []
    for v in vectors:
        w = np.array(v, dtype=np.float64)
        for _ in range(2):
            for u in out:
                w = w - np.dot(u, w) * u
        norm = np.linalg.norm(w)
        if norm < 1e-9 * max(np.linalg.norm(v), 1e-300):
            raise AssertionError("builtin hand: dependent directions in Gram-Schmidt")
        out.append(w / norm)
    return np.stack(out)


def _shape_directions(template: _Construction) -> np.ndarray:
    """shapedirs (V, 3, 10) in metres per unit beta, generation order.

    Direction i is the derivative of the generator w.r.t. knob i (central differences at
    the template, palm angles held fixed), orthogonalised in knob order, then scaled so
    its largest vertex displacement is _SHAPE_MAX_DISP[i].
    """
    V = len(template.points)
    dirs = []
    for i in range(NUM_BETAS):
        step = np.zeros(NUM_BETAS)
        step[i] = _FD_STEP
        hi = _construct(step, template.palm_angles).points
        lo = _construct(-step, template.palm_angles).points
        dirs.append(((hi - lo) / (2 * _FD_STEP)).reshape(-1))
    basis = _gram_schmidt(np.stack(dirs)).reshape(NUM_BETAS, V, 3)
    peak = np.linalg.norm(basis, axis=2).max(axis=1)
    basis = basis * (np.asarray(_SHAPE_MAX_DISP) / peak)[:, None, None]
    return np.transpose(basis, (1, 2, 0))


# ----------------------------------------------------------------------------- pose PCA
def _pose_vector(per_chain: Dict[int, np.ndarray]) -> np.ndarray:
    """(45,) axis-angle from {chain: (3, 3) rows = axis-angle of the chain's three joints}."""
    v = np.zeros((NUM_JOINTS - 1, 3))
    for c, rows in per_chain.items():
        v[3 * c:3 * c + 3] = rows
    return v.reshape(-1)


def _pose_space(frames) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hands_components (45, 45), hands_coeffs (1554, 45), hands_mean (45,)).

    Components (rows, orthonormal): whole-hand curl, finger spread, per-finger curls
    (index, middle, ring, pinky; with the whole-hand curl they span the thumb curl), hook grip (MCP straight, PIP/DIP bent), thumb
    opposition and abduction, then the standard basis completed by Gram-Schmidt.
    Coefficients: seeded Gaussians with decaying spread, centred. Mean: a slight curl.
    """
    lat = {c: frames[c][1] for c in frames}
    pal = {c: frames[c][2] for c in frames}
    tan = {c: frames[c][0] for c in frames}
    fingers = (0, 1, 3, 2)           # index, middle, ring, pinky
    curl_profile, thumb_profile = np.array([1.0, 1.2, 0.8]), np.array([0.5, 0.8, 0.8])

    def curl(c, profile):
        return np.outer(profile, lat[c])

    whole = _pose_vector({**{c: curl(c, curl_profile) for c in fingers},
                          _THUMB_CHAIN: curl(_THUMB_CHAIN, thumb_profile)})
    spread_amount = {0: -1.0, 1: -0.2, 3: 0.6, 2: 1.0}   # about the palm normal (+y)
    spread = _pose_vector({c: np.outer([1.0, 0, 0], a * pal[c]) for c, a in spread_amount.items()})
    singles = [_pose_vector({c: curl(c, curl_profile)}) for c in fingers]
    hook = _pose_vector({c: curl(c, np.array([-1.0, 1.0, 1.0])) for c in fingers})
    c = _THUMB_CHAIN
    oppose = _pose_vector({c: np.stack([0.7 * tan[c] + 0.7 * lat[c], 0.3 * lat[c], 0 * lat[c]])})
    abduct = _pose_vector({c: np.stack([pal[c], 0 * pal[c], 0 * pal[c]])})
    semantic = np.stack([whole, spread, *singles, hook, oppose, abduct])
    basis = _gram_schmidt(semantic)
    rest = []
    for e in np.eye(45):
        r = e - basis.T @ (basis @ e)
        r = r - np.stack(rest).T @ (np.stack(rest) @ r) if rest else r
        if np.linalg.norm(r) > 1e-6:
            rest.append(r / np.linalg.norm(r))
        if len(basis) + len(rest) == 45:
            break
    components = _gram_schmidt(np.concatenate([basis, np.stack(rest)]))

    rng = np.random.default_rng(_PCA_SEED)
    spread_sd = 0.05 + 0.85 * np.exp(-np.arange(45) / 6.0)
    coeffs = rng.standard_normal((_NUM_PCA_SAMPLES, 45)) * spread_sd
    coeffs -= coeffs.mean(axis=0)

    mean = _pose_vector({**{c: curl(c, np.array([0.12, 0.20, 0.12])) for c in fingers},
                         _THUMB_CHAIN: curl(_THUMB_CHAIN, np.array([0.10, 0.15, 0.12]))})
    return components, coeffs, mean


# ----------------------------------------------------------------------------- vertex ids
def _mano_part_of_id() -> np.ndarray:
    """(778,) DIGIT part label of each MANO vertex id (palm = everything unlisted)."""
    part = np.full(NUM_VERTICES, _PALM_PART, dtype=np.int64)
    for label, ranges in _MANO_PART_ID_RANGES.items():
        for lo, hi in ranges:
            part[lo:hi + 1] = label
    return part


def _vertex_permutation(con: _Construction, weights: np.ndarray) -> np.ndarray:
    """new_id[generation id]: the MANO-compatible vertex numbering.

    Fixed: the wrist loop (increasing palm angle) -> WRIST_BOUNDARY_IDS in order; per finger
    apex -> (manopth tip id), palmar cap vertex -> (smplx tip id), next cap vertex -> the
    third id. The other vertices take the free MANO ids of their DIGIT part in generation
    order (proximal -> distal); what is left over is paired up in increasing order.
    """
    new = np.full(NUM_VERTICES, -1, dtype=np.int64)
    new[con.rings["wrist"]] = WRIST_BOUNDARY_IDS
    tip_order = {  # (apex, palmar cap vertex at 90 deg, cap vertex at 30 deg)
        "thumb": (745, 744, 720), "index": (317, 320, 318), "middle": (444, 443, 445),
        "ring": (556, 554, 555), "pinky": (673, 671, 672),
    }
    for c, name in enumerate(_CHAIN_NAMES):
        apex, pad, side = tip_order[name]
        assert sorted((apex, pad, side)) == sorted(TIP_VERTEX_IDS[name])
        new[con.rings[f"{c}:apex"][0]] = apex
        new[con.rings[f"{c}:cap"][1]] = pad
        new[con.rings[f"{c}:cap"][0]] = side
    taken = np.zeros(NUM_VERTICES, dtype=bool)
    taken[new[new >= 0]] = True
    mano_part = _mano_part_of_id()
    my_part = np.asarray(DIGIT_JOINT_TO_PART)[np.argmax(weights, axis=1)]
    for label in range(16):
        free_ids = np.flatnonzero((mano_part == label) & ~taken)
        mine = np.flatnonzero((my_part == label) & (new < 0))
        m = min(len(free_ids), len(mine))
        new[mine[:m]] = free_ids[:m]
        taken[free_ids[:m]] = True
    rest = np.flatnonzero(new < 0)
    new[rest] = np.flatnonzero(~taken)
    return new


# ----------------------------------------------------------------------------- assembly
def _right_arrays() -> Dict[str, object]:
    """All arrays of the right model (MANO ids, metres)."""
    con = _construct(np.zeros(NUM_BETAS))
    if con.points.shape[0] != NUM_VERTICES or con.faces.shape[0] != NUM_FACES:
        raise AssertionError(f"builtin hand: built {con.points.shape[0]} vertices / "
                             f"{con.faces.shape[0]} faces, expected {NUM_VERTICES} / {NUM_FACES}")
    thumb1 = con.points[con.rings["thumb1"]].mean(axis=0)
    weights = _skinning_weights(con, thumb1)
    regressor = _joint_regressor(con, NUM_VERTICES)
    normals = _vertex_normals(con.points, con.faces)
    posedirs = _pose_correctives(normals, weights, con.frames)
    shapedirs = _shape_directions(con)
    components, coeffs, mean = _pose_space(con.frames)

    new = _vertex_permutation(con, weights)
    inv = np.argsort(new)  # generation id of each MANO id
    v_template = con.points[inv] * _CM
    regressor = regressor[:, inv]
    kintree = np.array([[ROOT_PARENT_SENTINEL] + list(MANO_PARENTS[1:]), list(range(NUM_JOINTS))],
                       dtype=np.int64)
    return {
        "v_template": v_template,
        "shapedirs": shapedirs[inv],
        "posedirs": posedirs[inv],
        "J_regressor": regressor,
        "weights": weights[inv],
        "kintree_table": kintree,
        "J": regressor @ v_template,
        "f": new[con.faces].astype(np.uint32),
        "hands_components": components,
        "hands_coeffs": coeffs,
        "hands_mean": mean,
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }


_MIRROR = np.array([-1.0, 1.0, 1.0])


def _mirror_arrays(right: Dict[str, object]) -> Dict[str, object]:
    """The left model: the right one mirrored by M = diag(-1, 1, 1) (see module docstring)."""
    m = _MIRROR
    pose_sign = np.einsum("c,r,k->crk", m, m, m).reshape(3, 9)
    aa_sign = np.tile(-m, NUM_JOINTS - 1)   # (w0, w1, w2) -> (w0, -w1, -w2)
    left = dict(right)
    left["v_template"] = right["v_template"] * m
    left["J"] = right["J"] * m
    left["shapedirs"] = right["shapedirs"] * m[None, :, None]
    left["posedirs"] = right["posedirs"] * np.tile(pose_sign, (1, NUM_JOINTS - 1))[None]
    left["hands_components"] = right["hands_components"] * aa_sign[None]
    left["hands_mean"] = right["hands_mean"] * aa_sign
    left["f"] = np.ascontiguousarray(right["f"][:, [0, 2, 1]])
    return left


@functools.lru_cache(maxsize=None)
def _cached_arrays(side: str) -> Dict[str, object]:
    arrays = _right_arrays() if side == "right" else _mirror_arrays(_cached_arrays("right"))
    for v in arrays.values():
        if isinstance(v, np.ndarray):
            v.setflags(write=False)
    return arrays


def builtin_mano_arrays(side: str = "right") -> Dict[str, object]:
    """The built-in hand model as the official MANO pickle's (chumpy-decoded) dict.

    Keys: v_template (778, 3) f64 [m]; shapedirs (778, 3, 10) f64; posedirs (778, 3, 135) f64;
    J_regressor (16, 778) f64 (dense, rows sum to 1); weights (778, 16) f64; kintree_table
    (2, 16) int64 (root parent 4294967295); J (16, 3) f64 = J_regressor @ v_template;
    f (1538, 3) uint32 (outward, counter-clockwise seen from outside); hands_components
    (45, 45) f64 (orthonormal rows); hands_coeffs (1554, 45) f64; hands_mean (45,) f64;
    bs_style 'lbs'; bs_type 'lrotmin'. Deterministic; generated once, then copies are returned.
    """
    if side not in ("right", "left"):
        raise ValueError(f"builtin_mano_arrays: side must be 'right' or 'left', got {side!r}")
    return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in _cached_arrays(side).items()}


def face_part_labels(faces: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """DIGIT's 16-part label of each face: (F,) int64 in 0..15.

    Each face takes the joint with the largest summed LBS weight over its three vertices,
    mapped through DIGIT_JOINT_TO_PART (label 8 = palm).
    faces: (F, 3) integer vertex ids; weights: (V, 16) LBS weights.
    """
    faces, weights = np.asarray(faces), np.asarray(weights)
    if faces.ndim != 2 or faces.shape[1] != 3 or not np.issubdtype(faces.dtype, np.integer):
        raise ValueError(f"face_part_labels: faces must be an integer (F, 3) array, got {faces.dtype} {faces.shape}")
    if weights.ndim != 2 or weights.shape[1] != NUM_JOINTS:
        raise ValueError(f"face_part_labels: weights must be (V, {NUM_JOINTS}), got {weights.shape}")
    if faces.size and (faces.min() < 0 or faces.max() >= weights.shape[0]):
        raise ValueError(f"face_part_labels: face ids must lie in [0, {weights.shape[0]}), "
                         f"got [{faces.min()}, {faces.max()}]")
    dominant = np.argmax(weights[faces.astype(np.int64)].sum(axis=1), axis=1)
    return np.asarray(DIGIT_JOINT_TO_PART, dtype=np.int64)[dominant]
