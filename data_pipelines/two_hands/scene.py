"""Random two-hand scene parameters (pure numpy, no rendering) of the ``two_hands`` dataset.

Builds on :mod:`data_pipelines.synthetic_hands.scene` (hand pose space, finger-pose and
appearance samplers, splines, per-sequence generators) and uses its conventions: OpenCV
camera frame in metres, pixel centre of (row i, col j) at (x=j, y=i), MANO axis-angle with a
FLAT hand mean, ``vertices = R0 (V - J0) + J0 + transl``.

A frame is a person crop (height : width = 4 : 3, InterWild's body-crop aspect) seen by a
pinhole camera facing the person, with the person's right hand (built-in right model) and
left hand (built-in left model). The person's right hand appears on the image LEFT (smaller
x). Both hands are sampled as RIGHT hands: the right one directly, the left one in the
mirror image (x -> -x) of the scene, then mirrored (pose -> (w0, -w1, -w2) per joint,
translation -> (-tx, ty, tz)), so every orientation rule reads the same for both hands
("palm towards the other hand", "fingers up").

Sequence kinds (``KINDS``; sequence ``n`` of a split has kind ``KINDS[n % len(KINDS)]``):

* ``separate``: both hands in view, 18-32 cm apart;
* ``touching``: palms turned towards each other and brought together until the closest
  vertices of the two hands are ``CONTACT_GAP_M`` apart in the closest frame;
* ``crossing``: the hands swap sides during the sequence, one 3-5 cm in front of the other;
* ``occluding``: one hand in front of the other, overlapping it in the image;
* ``exit``: one hand leaves (or enters) the image through its side border;
* ``single``: one hand stays outside the image for the whole sequence.

Hands never interpenetrate grossly: after placement the pair is moved apart (touching:
together) along x (or z for crossing / occluding) by one shift per sequence until the
closest vertices are at least ``MIN_GAP_M`` (``CONTACT_GAP_M`` for touching) apart.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Tuple

import numpy as np

from data_pipelines.synthetic_hands import scene as hand_scene
from handjax.geometry.rotations import axis_angle_to_matrix, matrix_to_axis_angle

KINDS = ("separate", "touching", "crossing", "occluding", "exit", "single")
ASPECT = (4, 3)  # person crop height : width (InterWild 512 x 384)
MIN_GAP_M = 0.012  # closest vertices of the two hands, metres (all kinds but touching)
CONTACT_GAP_M = 0.005  # touching: closest vertices in the closest frame
_MIRROR = np.array([-1.0, 1.0, 1.0])
_GAP_STRIDE = 2  # every 2nd vertex in the gap search (vertex spacing ~3-7 mm)

# Hand orientation ranges, radians: (first-key range, bound of the path) of yaw (about the
# finger axis, 0 = palm to the camera, +pi/2 = palm towards +x), tilt and roll (as
# synthetic_hands.scene.sample_global_motion), around a kind-dependent yaw centre.
ORIENTATION_RANGES = {
    "raised": {"yaw": (1.2, 1.5), "tilt": (0.5, 0.7), "roll": (0.8, 1.1)},
    "facing": {"yaw": (0.35, 0.5), "tilt": (0.3, 0.45), "roll": (0.4, 0.6)},
}


@dataclasses.dataclass(frozen=True)
class TwoHandSceneConfig:
    """Sampling knobs of one split: frames per sequence, image height (width = 3/4 of it)."""

    frames: int
    height: int
    annotate_every: int = 1
    betas_clip: float = 2.5

    @property
    def width(self) -> int:
        return person_width(self.height)


def person_width(height: int) -> int:
    """Width of a 4:3 (height : width) person crop; the height must divide by 4."""
    if height < 4 or height % ASPECT[0]:
        raise ValueError(f"two-hand person crop: the image height must be a positive multiple of {ASPECT[0]} "
                         f"(4:3 aspect), got {height}")
    return height * ASPECT[1] // ASPECT[0]


def kind_of(number: int) -> str:
    """The sequence kind of sequence ``number`` of a split."""
    return KINDS[int(number) % len(KINDS)]


# ----------------------------------------------------------------------------- paths
def _keys(frames: int) -> int:
    return int(np.clip(round(frames / 4) + 1, 2, 6))


def _smoothstep(t: np.ndarray) -> np.ndarray:
    return t * t * (3.0 - 2.0 * t)


def wander(rng: np.random.Generator, frames: int, amplitude: float, dims: int = 3) -> np.ndarray:
    """(frames, dims) smooth random offsets in [-amplitude, amplitude] per key (Catmull-Rom)."""
    return hand_scene.catmull_rom(rng.uniform(-amplitude, amplitude, size=(_keys(frames), dims)), frames)


def orientation_path(rng: np.random.Generator, space: hand_scene.PoseSpace, frames: int, style: str,
                     yaw_centre: float = 0.0) -> np.ndarray:
    """(frames, 3, 3) smooth orientations (model -> camera) of a RIGHT hand.

    R = Rz(roll) Rx(tilt) R_canonical R_forward(yaw): R_canonical shows the palm to the
    camera with the fingers up (:func:`synthetic_hands.scene.canonical_orientation`); yaw
    (yaw_centre + a sampled path) turns the hand about its finger axis (+pi/2: palm towards
    +x), tilt leans the fingers towards / away from the camera, roll turns the hand in the
    image plane. ``style`` picks the ranges of ORIENTATION_RANGES.
    """
    ranges = ORIENTATION_RANGES[style]
    first = np.array([rng.uniform(-ranges[k][0], ranges[k][0]) for k in ("yaw", "tilt", "roll")])
    bound = np.array([ranges[k][1] for k in ("yaw", "tilt", "roll")])
    keys = [first]
    for _ in range(_keys(frames) - 1):
        keys.append(np.clip(keys[-1] + rng.uniform(-1, 1, size=3) * np.array([0.5, 0.3, 0.35]), -bound, bound))
    path = hand_scene.catmull_rom(np.stack(keys), frames)
    yaw, tilt, roll = yaw_centre + path[:, 0], path[:, 1], path[:, 2]
    r_yaw = axis_angle_to_matrix(yaw[:, None] * space.forward)
    r_tilt = axis_angle_to_matrix(tilt[:, None] * np.array([1.0, 0.0, 0.0]))
    r_roll = axis_angle_to_matrix(roll[:, None] * np.array([0.0, 0.0, 1.0]))
    return r_roll @ r_tilt @ hand_scene.canonical_orientation(space) @ r_yaw


# ----------------------------------------------------------------------------- placement
def _backproject(u: np.ndarray, v: np.ndarray, depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pixel (u, v) at camera depth -> camera-frame point (..., 3)."""
    return np.stack([(u - K[0, 2]) / K[0, 0] * depth, (v - K[1, 2]) / K[1, 1] * depth, depth], axis=-1)


def hand_centres(rng: np.random.Generator, kind: str, frames: int, K: np.ndarray, height: int, width: int,
                 depth: float, fill: float) -> Tuple[np.ndarray, np.ndarray, Dict[str, object]]:
    """Camera-frame centres (mean vertex) of the right and left hand (frames, 3) each, and
    the choices made (``front``: hand nearer to the camera, ``outside``: hand that leaves
    / stays out of the image, ``push_axis``: 0 = x, 2 = z)."""
    T = frames
    t = _smoothstep(np.linspace(0.0, 1.0, T))[:, None]
    u0, v0 = rng.uniform(0.4, 0.6) * width, rng.uniform(0.4, 0.68) * height
    centre = _backproject(u0, v0, depth, K) + wander(rng, T, 0.025)
    info: Dict[str, object] = {"front": None, "outside": None, "push_axis": 0}
    if kind in ("separate", "exit", "single"):
        half = rng.uniform(0.09, 0.16)
        off_r = np.array([-half, rng.uniform(-0.06, 0.06), rng.uniform(-0.04, 0.04)]) + wander(rng, T, 0.02)
        off_l = np.array([half, rng.uniform(-0.06, 0.06), rng.uniform(-0.04, 0.04)]) + wander(rng, T, 0.02)
    elif kind == "touching":
        half = rng.uniform(0.03, 0.05)
        dy, dz = rng.uniform(-0.02, 0.02), rng.uniform(-0.015, 0.015)
        off_r = np.array([-half, -dy, -dz]) + wander(rng, T, 0.01)
        off_l = np.array([half, dy, dz]) + wander(rng, T, 0.01)
    elif kind in ("crossing", "occluding"):
        front = "right" if rng.random() < 0.5 else "left"
        dz = rng.uniform(0.03, 0.05)
        sign = np.array([-1.0, 1.0]) if front == "right" else np.array([1.0, -1.0])
        if kind == "crossing":
            half = rng.uniform(0.06, 0.1)
            x_r = -half + 2.0 * half * t[:, 0]
        else:
            half = rng.uniform(-0.01, 0.025)
            x_r = np.full(T, -half)
        dy = rng.uniform(-0.03, 0.03)
        off_r = np.stack([x_r, np.full(T, -dy), np.full(T, sign[0] * dz)], -1) + wander(rng, T, 0.01)
        off_l = np.stack([-x_r, np.full(T, dy), np.full(T, sign[1] * dz)], -1) + wander(rng, T, 0.01)
        info.update(front=front, push_axis=2)
    else:
        raise ValueError(f"unknown two-hand sequence kind {kind!r}; known: {KINDS}")
    c_r, c_l = centre + off_r, centre + off_l
    if kind in ("exit", "single"):
        outside = "right" if rng.random() < 0.5 else "left"
        # The right hand leaves through the left border, the left hand through the right one.
        out_frac = -(0.12 + 0.75 * fill) if outside == "right" else 1.0 + 0.12 + 0.75 * fill
        if kind == "exit":
            in_frac = rng.uniform(0.15, 0.3) if outside == "right" else rng.uniform(0.7, 0.85)
            path = t[:, 0] if rng.random() < 0.5 else 1.0 - t[:, 0]  # leaving or entering
            frac = in_frac + (out_frac - in_frac) * path
        else:
            frac = np.full(T, out_frac)
        c = c_r if outside == "right" else c_l
        c[:, 0] = (frac * width - K[0, 2]) / K[0, 0] * c[:, 2]
        info["outside"] = outside
    return c_r, c_l, info


def separation_shift(verts_r: np.ndarray, verts_l: np.ndarray, direction: np.ndarray, target: float,
                     allow_pull: bool) -> float:
    """Shift s (metres) such that moving the left hand by +s/2 * direction and the right
    one by -s/2 * direction makes the closest vertices (over all frames) ``target`` apart:
    0 when they already are at least that far apart and ``allow_pull`` is False.

    verts (T, V, 3) (every 2nd vertex is used); direction a unit vector u. For a pair of
    vertices with difference d = a - b, |d - s u|^2 = |d|^2 - 2 s (d . u) + s^2: the
    squared closest distance is s^2 plus the lower envelope of one line per pair. Bisection
    on s (the closest distance grows with s once the hands overlap; ~1e-5 m precision);
    lines that lie above the envelope everywhere in the current bracket are dropped.
    """
    a, b = verts_r[:, ::_GAP_STRIDE], verts_l[:, ::_GAP_STRIDE]
    u = np.asarray(direction, np.float64)
    offset = (np.sum(a * a, -1)[:, :, None] + np.sum(b * b, -1)[:, None, :]
              - 2.0 * np.matmul(a, np.swapaxes(b, 1, 2))).ravel()
    slope = -2.0 * ((a @ u)[:, :, None] - (b @ u)[:, None, :]).ravel()

    def gap(s):
        return float(np.sqrt(max(np.min(offset + s * slope) + s * s, 0.0)))

    if gap(0.0) >= target:
        if not allow_pull:
            return 0.0
        # Centres meet at s = -(c_l - c_r).u: the hands overlap there.
        lo = -float(np.dot(b.mean((0, 1)) - a.mean((0, 1)), u))
        hi = 0.0
        if gap(lo) >= target:
            return lo
    else:
        lo, hi = 0.0, 0.02
        while gap(hi) < target:
            lo, hi = hi, 2.0 * hi
            if hi > 1.0:
                raise RuntimeError("separation_shift: the hands cannot be separated (> 1 m)")
    for _ in range(20):
        at_lo, at_hi = offset + lo * slope, offset + hi * slope
        keep = np.minimum(at_lo, at_hi) <= np.min(np.maximum(at_lo, at_hi))  # may touch the envelope
        offset, slope = offset[keep], slope[keep]
        mid = 0.5 * (lo + hi)
        if gap(mid) >= target:
            hi = mid
        else:
            lo = mid
    return hi


# ----------------------------------------------------------------------------- appearance
def person_background(rng: np.random.Generator, height: int, width: int, skin: np.ndarray) -> np.ndarray:
    """(H, W, 3) in [0, 1]: a random background (synthetic_hands) with a soft person
    silhouette (torso in a clothing colour, head in the skin tone ``skin`` (3,)) filling
    the crop like a body box."""
    size = max(height, width)
    img = hand_scene.sample_background(rng, size)[:height, :width]
    yy, xx = np.meshgrid((np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width, indexing="ij")
    aspect = height / width
    xc = 0.5 + rng.normal(0.0, 0.04)
    cloth = rng.random(3) * (0.65 + 0.35 * np.cos(rng.uniform(4.0, 12.0) * (yy + rng.uniform(0, 1))) ** 2)[..., None]
    torso = ((xx - xc) / rng.uniform(0.36, 0.46)) ** 2 + ((yy - 0.82) / 0.55) ** 2
    head = ((xx - xc) * aspect / 0.16) ** 2 * 0.6 + ((yy - 0.16) / 0.12) ** 2
    for dist, colour in ((torso, cloth), (head, skin[None, None] * np.ones_like(img))):
        alpha = 1.0 / (1.0 + np.exp(np.clip((dist - 1.0) / 0.08, -50.0, 50.0)))
        img = img * (1.0 - alpha[..., None]) + colour * alpha[..., None]
    return np.clip(img, 0.0, 1.0)


# ----------------------------------------------------------------------------- sequences
VerticesFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def sample_sequence(rng: np.random.Generator, rig: hand_scene.HandRig, vertices_fn: VerticesFn,
                    cfg: TwoHandSceneConfig, kind: str) -> Dict[str, np.ndarray]:
    """All per-frame scene parameters of one two-hand sequence (T = cfg.frames, H x W image).

    vertices_fn(pose (N, 48), betas (N, 10)) -> (N, 778, 3): vertices of the built-in RIGHT
    hand with zero translation (a MANO forward pass). Hand axis 0 is the right hand, 1 the
    left hand. Returns float32 arrays: pose (T, 2, 48), betas (T, 2, 10), transl (T, 2, 3),
    K (T, 3, 3), colors (2, 778, 3), light_dir (3,), light_color (3,), ambient (), diffuse
    (), noise_std (), background (H, W, 3); annotated (T,) bool; kind () int64.
    """
    T, H, W = cfg.frames, cfg.height, cfg.width
    space = rig.space
    depth = rng.uniform(0.45, 0.8)
    fill = rng.uniform(0.22, 0.34)  # hand length / image width at the interaction depth
    focal = fill * W * depth / hand_scene.HAND_LENGTH_M
    cx, cy = (W - 1) / 2.0 + rng.normal(0.0, 0.02 * W), (H - 1) / 2.0 + rng.normal(0.0, 0.02 * H)
    K = np.array([[focal, 0.0, cx], [0.0, focal, cy], [0.0, 0.0, 1.0]])
    c_r, c_l, info = hand_centres(rng, kind, T, K, H, W, depth, fill)

    betas = np.clip(rng.normal(size=rig.num_betas), -cfg.betas_clip, cfg.betas_clip)
    style, yaw_centre = ("facing", 0.5 * np.pi) if kind == "touching" else ("raised", 0.0)
    poses, betas_h, verts, transl = [], [], [], []
    for hand, centre in (("right", c_r), ("left", c_l)):
        rot = orientation_path(rng, space, T, style, yaw_centre)
        pose = np.concatenate([matrix_to_axis_angle(rot), hand_scene.sample_hand_poses(rng, space, T)], axis=1)
        b = np.repeat((betas + rng.normal(0.0, 0.05, size=betas.shape))[None], T, axis=0)
        v_centre = centre if hand == "right" else centre * _MIRROR  # the left hand is sampled mirrored
        v = np.asarray(vertices_fn(pose.astype(np.float32), b.astype(np.float32)), np.float64)
        t = v_centre - v.mean(axis=1)
        v = v + t[:, None]
        if hand == "left":
            pose = (pose.reshape(T, 16, 3) * np.array([1.0, -1.0, -1.0])).reshape(T, 48)
            t, v = t * _MIRROR, v * _MIRROR
        poses.append(pose), betas_h.append(b), verts.append(v), transl.append(t)

    axis = info["push_axis"]
    direction = np.eye(3)[axis]
    if axis == 2 and info["front"] == "left":
        direction = -direction  # the right hand is behind: push it away from the camera
    touching = kind == "touching"
    shift = separation_shift(verts[0], verts[1], direction, CONTACT_GAP_M if touching else MIN_GAP_M, touching)
    transl[0] = transl[0] - 0.5 * shift * direction
    transl[1] = transl[1] + 0.5 * shift * direction

    colors = hand_scene.sample_skin_colors(rng, rig.rest_vertices, rig.rest_normals, space.palm)
    colors = np.stack([colors, colors * (1.0 + rng.normal(0.0, 0.03))])  # one person: one skin
    light = np.array([rng.uniform(-1, 1), rng.uniform(-1, 1), -rng.uniform(0.4, 1.5)])
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    return {
        "pose": f32(np.stack(poses, 1)),
        "betas": f32(np.stack(betas_h, 1)),
        "transl": f32(np.stack(transl, 1)),
        "K": f32(np.repeat(K[None], T, axis=0)),
        "colors": f32(np.clip(colors, 0.0, 1.0)),
        "light_dir": f32(light / np.linalg.norm(light)),
        "light_color": f32(1.0 + rng.normal(0.0, 0.05, size=3)),
        "ambient": f32(rng.uniform(0.35, 0.6)),
        "diffuse": f32(rng.uniform(0.45, 0.8)),
        "noise_std": f32(rng.uniform(0.0, 0.02)),
        "background": f32(person_background(rng, H, W, colors[0].mean(axis=0))),
        "annotated": hand_scene.annotated_flags(T, cfg.annotate_every),
        "kind": np.int64(KINDS.index(kind)),
    }
