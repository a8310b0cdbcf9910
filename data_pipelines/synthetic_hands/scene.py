"""Random scene parameters of the synthetic hand-video dataset (pure numpy, no rendering).

Every sequence is drawn from its own ``np.random.Generator`` seeded by
``(seed, split, sequence number)``, so a dataset is identical for a given seed whatever
the render batch size, and sequences of different splits never coincide.

Conventions
-----------
* Camera frame: OpenCV (x right, y down, z forward), metres. Pixels: the centre of pixel
  (row i, col j) is (x=j, y=i).
* Poses are MANO axis-angle (48,) with a *flat* hand mean (absolute local rotations);
  entries 0:3 are the global orientation in the camera frame. ``transl`` (3,) is MANO's
  translation: ``vertices = R0 (V(pose, betas) - J0(betas)) + J0(betas) + transl``.
* Everything is sampled for a RIGHT hand. A left-hand sequence is the exact mirror image
  (x -> -x) of a sampled right-hand scene: pose -> ``mirror_axis_angle(pose)``,
  transl -> ``(-tx, ty, tz)``; rendered with the built-in left model (the mirror of the
  right one) it gives the mirrored geometry.

Hand poses come from a small anatomical model built from the rest-pose joints of a right
hand (:class:`PoseSpace`): finger flexion about each bone's bending axis (MCP / PIP / DIP
coupled like real fingers), limited MCP spread, and thumb opposition, with key poses drawn
from a curl distribution (open hands, half-closed grasps, fists, pointing) and
interpolated with a Catmull-Rom spline along the sequence.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Tuple

import numpy as np

from data_pipelines.builtin import annotated_flags, split_sequences  # noqa: F401  (scene API)
from handjax.geometry.rotations import axis_angle_to_matrix, matrix_to_axis_angle

NUM_JOINTS = 16
# MANO joint ids of each finger chain, proximal -> distal (MANO's tree order).
FINGER_CHAINS = {"index": (1, 2, 3), "middle": (4, 5, 6), "pinky": (7, 8, 9), "ring": (10, 11, 12)}
THUMB_CHAIN = (13, 14, 15)
# Tip vertex ids ("freihand" convention, identical for the built-in model) per chain.
TIP_VERTICES = {"index": 320, "middle": 443, "pinky": 672, "ring": 555, "thumb": 744}
# Radial (+) / ulnar (-) spread of each finger for a fully spread hand, degrees.
SPREAD_DEG = {"index": 14.0, "middle": 3.0, "ring": -8.0, "pinky": -18.0}
# Skin albedo anchors (sRGB in [0, 1]) from very light to very dark; tones are interpolated.
SKIN_TONES = np.array([
    [0.98, 0.86, 0.76], [0.94, 0.78, 0.66], [0.88, 0.69, 0.55], [0.78, 0.57, 0.42],
    [0.64, 0.44, 0.30], [0.49, 0.33, 0.22], [0.36, 0.24, 0.16],
])
BACKGROUND_KINDS = ("flat", "noise", "stripes", "checker", "blobs")
HAND_LENGTH_M = 0.19  # wrist joint -> middle fingertip, used to size the hand in the image


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


# ----------------------------------------------------------------------------- pose space
@dataclasses.dataclass(frozen=True)
class PoseSpace:
    """Anatomical axes of a RIGHT hand in its rest pose (unit vectors, model frame).

    forward: wrist -> middle knuckle; radial: towards the thumb side; palm: the palm normal
    (pointing out of the palm). flex[j]: rotation axis of joint j whose positive rotation
    curls the bone towards the palm; radial_axis[j]: positive rotation moves the bone
    towards the thumb side; twist[j]: the bone direction. Rows indexed by MANO joint id.
    """

    forward: np.ndarray
    radial: np.ndarray
    palm: np.ndarray
    flex: np.ndarray
    radial_axis: np.ndarray
    twist: np.ndarray

    @staticmethod
    def from_rest(joints: np.ndarray, vertices: np.ndarray) -> "PoseSpace":
        """Axes from rest joints (16, 3) and vertices (778, 3) of a right hand (any frame)."""
        joints, vertices = np.asarray(joints, np.float64), np.asarray(vertices, np.float64)
        if joints.shape != (NUM_JOINTS, 3) or vertices.ndim != 2 or vertices.shape[1] != 3:
            raise ValueError(f"PoseSpace.from_rest: need joints (16, 3) and vertices (V, 3), "
                             f"got {joints.shape} and {vertices.shape}")
        forward = _unit(joints[4] - joints[0])
        across = joints[1] - joints[7]  # index knuckle - pinky knuckle: radial for a right hand
        palm = _unit(np.cross(across, forward))
        radial = np.cross(forward, palm)
        # The thumb pad faces the palm side and the index finger.
        thumb_pad = _unit(0.55 * palm - 0.835 * radial)
        flex = np.zeros((NUM_JOINTS, 3))
        radial_axis = np.zeros((NUM_JOINTS, 3))
        twist = np.zeros((NUM_JOINTS, 3))
        chains = dict(FINGER_CHAINS, thumb=THUMB_CHAIN)
        for name, chain in chains.items():
            ends = list(joints[list(chain[1:])]) + [vertices[TIP_VERTICES[name]]]
            bend_to = thumb_pad if name == "thumb" else palm
            for j, end in zip(chain, ends):
                t = _unit(end - joints[j])
                twist[j] = t
                # Positive rotation about (t x d) turns t towards d.
                flex[j] = _unit(np.cross(t, bend_to))
                radial_axis[j] = _unit(np.cross(t, radial))
        return PoseSpace(forward, radial, palm, flex, radial_axis, twist)


def _finger_angles(rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """One key pose: per-chain (3 joints, [flex, radial, twist]) angles in radians."""
    r = rng.random()
    grasp = rng.uniform(0.0, 0.25) if r < 0.3 else (rng.uniform(0.2, 0.7) if r < 0.7 else rng.uniform(0.6, 1.0))
    pointing = rng.random() < 0.15
    spread = rng.uniform(-0.2, 1.0) * (1.0 - 0.8 * grasp)
    out = {}
    for name in FINGER_CHAINS:
        curl = np.clip(grasp + rng.normal(0.0, 0.15), 0.0, 1.0)
        if pointing and name == "index":
            curl = rng.uniform(0.0, 0.15)
        mcp = np.clip(np.deg2rad(85.0) * curl + np.deg2rad(rng.normal(0, 5)), np.deg2rad(-20), np.deg2rad(90))
        pip = np.clip(np.deg2rad(100.0) * curl + np.deg2rad(rng.normal(0, 6)), 0.0, np.deg2rad(110))
        dip = np.clip(0.7 * pip + np.deg2rad(rng.normal(0, 4)), np.deg2rad(-5), np.deg2rad(80))
        ang = np.zeros((3, 3))
        ang[:, 0] = (mcp, pip, dip)
        ang[0, 1] = np.deg2rad(SPREAD_DEG[name] * spread + rng.normal(0, 2))
        ang[:, 2] = np.deg2rad(rng.normal(0, 3, size=3))
        out[name] = ang
    thumb_curl = np.clip(0.6 * grasp + rng.uniform(0.0, 0.5), 0.0, 1.0)
    oppose = np.clip(0.5 * grasp + rng.uniform(0.0, 0.6), 0.0, 1.0)
    ang = np.zeros((3, 3))
    ang[0] = np.deg2rad((15.0 * oppose + rng.normal(0, 4), -25.0 * oppose + rng.normal(0, 5), 30.0 * oppose))
    ang[1, 0] = np.deg2rad(50.0 * thumb_curl + rng.normal(0, 5))
    ang[2, 0] = np.clip(np.deg2rad(70.0 * thumb_curl + rng.normal(0, 6)), np.deg2rad(-10), np.deg2rad(80))
    out["thumb"] = ang
    return out


def angles_to_hand_pose(space: PoseSpace, angles: Dict[str, np.ndarray]) -> np.ndarray:
    """Per-chain [flex, radial, twist] angles -> (45,) axis-angle of joints 1..15."""
    aa = np.zeros((NUM_JOINTS, 3))
    chains = dict(FINGER_CHAINS, thumb=THUMB_CHAIN)
    for name, chain in chains.items():
        for row, j in enumerate(chain):
            f, rad, tw = angles[name][row]
            aa[j] = f * space.flex[j] + rad * space.radial_axis[j] + tw * space.twist[j]
    return aa[1:].reshape(-1)


def catmull_rom(keys: np.ndarray, num: int) -> np.ndarray:
    """Sample a uniform Catmull-Rom spline through ``keys`` (K, D) at ``num`` evenly spaced
    parameters from the first to the last key -> (num, D). The end keys are repeated."""
    keys = np.asarray(keys, np.float64)
    n_keys = keys.shape[0]
    if n_keys == 1 or num == 1:
        return np.repeat(keys[:1], num, axis=0)
    padded = np.concatenate([keys[:1], keys, keys[-1:]])
    s = np.linspace(0.0, n_keys - 1, num)
    seg = np.minimum(np.floor(s).astype(int), n_keys - 2)
    u = (s - seg)[:, None]
    p0, p1, p2, p3 = padded[seg], padded[seg + 1], padded[seg + 2], padded[seg + 3]
    return 0.5 * ((2 * p1) + (-p0 + p2) * u + (2 * p0 - 5 * p1 + 4 * p2 - p3) * u ** 2
                  + (-p0 + 3 * p1 - 3 * p2 + p3) * u ** 3)


def _key_count(frames: int) -> int:
    return int(np.clip(round(frames / 4) + 1, 2, 6))


def sample_hand_poses(rng: np.random.Generator, space: PoseSpace, frames: int) -> np.ndarray:
    """(frames, 45) smooth right-hand finger poses (axis-angle, flat mean)."""
    n_keys = _key_count(frames)
    keys = [_finger_angles(rng)]
    for _ in range(n_keys - 1):
        target = _finger_angles(rng)
        step = rng.uniform(0.3, 0.8)
        keys.append({k: keys[-1][k] + step * (target[k] - keys[-1][k]) for k in target})
    flat = np.stack([np.concatenate([k[n].reshape(-1) for n in sorted(k)]) for k in keys])
    path = catmull_rom(flat, frames)
    names = sorted(keys[0])
    poses = []
    for row in path:
        chunks = np.split(row, len(names))
        poses.append(angles_to_hand_pose(space, {n: c.reshape(3, 3) for n, c in zip(names, chunks)}))
    return np.stack(poses)


# ----------------------------------------------------------------------------- global motion
def canonical_orientation(space: PoseSpace) -> np.ndarray:
    """Rotation (model -> camera) showing the palm to the camera with the fingers up.

    forward -> -y (image up), palm normal -> -z (towards the camera), radial -> +x.
    """
    basis = np.stack([space.forward, space.palm, space.radial], axis=1)  # model columns
    target = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]]).T
    return target @ basis.T


def _axis_rotation(axis: np.ndarray, angle: np.ndarray) -> np.ndarray:
    return axis_angle_to_matrix(np.asarray(angle)[..., None] * np.asarray(axis, np.float64))


# radians: (range of the first key frame, bound of the whole path) for yaw (about the finger axis:
# 0 = palm to the camera), tilt (fingers towards / away from the camera) and roll (in the image plane).
# Third-person views of a raised hand: palm to side views (up to ~85 degrees of yaw), fingers
# within ~75 degrees of upright (the crop augmentation adds its own in-plane rotation). Version
# 1.0.0 drew yaw over the full circle and roll up to 150 degrees: a nearly uniform orientation
# that a small network trained for minutes on a CPU could not learn at all.
GLOBAL_MOTION_RANGES = {"yaw": (1.2, 1.5), "tilt": (0.5, 0.7), "roll": (1.0, 1.3)}


def sample_global_motion(rng: np.random.Generator, space: PoseSpace, frames: int
                         ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Smooth global orientations (frames, 3, 3), projected hand centres as image fractions
    (frames, 2) and depths (frames,) in metres.

    R = Rz(roll) Rx(tilt) R_canonical R_forward(yaw): yaw turns the hand about its own
    finger axis (palm / side / back views), tilt leans the fingers towards or away from the
    camera, roll turns the hand in the image plane.
    """
    n_keys = _key_count(frames)
    y, t, r = GLOBAL_MOTION_RANGES["yaw"], GLOBAL_MOTION_RANGES["tilt"], GLOBAL_MOTION_RANGES["roll"]
    first = np.array([rng.uniform(-y[0], y[0]), rng.uniform(-t[0], t[0]), rng.uniform(-r[0], r[0]),
                      rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6), rng.uniform(0.3, 0.8)])
    step_scale = np.array([0.8, 0.35, 0.5, 0.07, 0.07, 0.08])
    lo = np.array([-y[1], -t[1], -r[1], 0.3, 0.3, 0.3])
    hi = np.array([y[1], t[1], r[1], 0.7, 0.7, 0.8])
    keys = [first]
    for _ in range(n_keys - 1):
        keys.append(np.clip(keys[-1] + rng.uniform(-1, 1, size=6) * step_scale, lo, hi))
    path = catmull_rom(np.stack(keys), frames)
    path[:, 1:] = np.clip(path[:, 1:], lo[1:], hi[1:])
    yaw, tilt, roll = path[:, 0], path[:, 1], path[:, 2]
    r_yaw = _axis_rotation(space.forward, yaw)
    r_tilt = _axis_rotation(np.array([1.0, 0.0, 0.0]), tilt)
    r_roll = _axis_rotation(np.array([0.0, 0.0, 1.0]), roll)
    rot = r_roll @ r_tilt @ canonical_orientation(space) @ r_yaw
    return rot, path[:, 3:5], path[:, 5]


# ----------------------------------------------------------------------------- appearance
def sample_skin_colors(rng: np.random.Generator, rest_vertices: np.ndarray, rest_normals: np.ndarray,
                       palm: np.ndarray) -> np.ndarray:
    """Per-vertex albedo (V, 3) in [0, 1]: a skin tone, a smooth low-frequency variation,
    lighter palms and a little per-vertex noise."""
    t = rng.uniform(0.0, len(SKIN_TONES) - 1)
    lo = int(np.floor(t))
    hi = min(lo + 1, len(SKIN_TONES) - 1)
    base = SKIN_TONES[lo] + (t - lo) * (SKIN_TONES[hi] - SKIN_TONES[lo])
    base = base * (1.0 + rng.normal(0.0, 0.03, size=3))
    field = np.zeros(len(rest_vertices))
    for _ in range(3):
        direction = _unit(rng.normal(size=3))
        freq = rng.uniform(15.0, 60.0)  # radians per metre: blotches of 2-7 cm
        field += np.sin(freq * rest_vertices @ direction + rng.uniform(0, 2 * np.pi)) / 3.0
    colors = base[None] * (1.0 + 0.07 * field[:, None])
    palm_side = np.clip(rest_normals @ palm, 0.0, 1.0)[:, None] * rng.uniform(0.0, 0.35)
    colors = colors + palm_side * (np.array([0.95, 0.80, 0.72]) - colors)
    colors = colors * (1.0 + rng.normal(0.0, 0.02, size=colors.shape))
    return np.clip(colors, 0.0, 1.0)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int) -> np.ndarray:
    """Bilinearly upsampled uniform noise on a (cells+1)^2 grid -> (size, size, channels)."""
    grid = rng.random((cells + 1, cells + 1, channels))
    pos = np.linspace(0.0, cells, size)
    i0 = np.minimum(np.floor(pos).astype(int), cells - 1)
    f = pos - i0
    rows = grid[i0] * (1 - f)[:, None, None] + grid[i0 + 1] * f[:, None, None]
    return rows[:, i0] * (1 - f)[None, :, None] + rows[:, i0 + 1] * f[None, :, None]


def sample_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float background in [0, 1]: flat, noise, stripes, checker or blobs."""
    kind = BACKGROUND_KINDS[rng.integers(len(BACKGROUND_KINDS))]
    c1, c2 = rng.random(3), rng.random(3)
    yy, xx = np.meshgrid(np.arange(size) / size, np.arange(size) / size, indexing="ij")
    if kind == "flat":
        img = np.broadcast_to(c1, (size, size, 3)).copy()
    elif kind == "noise":
        img = 0.6 * _smooth_noise(rng, size, int(rng.integers(3, 12)), 3) + 0.4 * c1
    elif kind in ("stripes", "checker"):
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(0.05, 0.3)
        u = (xx * np.cos(angle) + yy * np.sin(angle)) / period
        if kind == "stripes":
            w = 0.5 + 0.5 * np.tanh(4.0 * np.sin(2 * np.pi * u))
        else:
            v = (-xx * np.sin(angle) + yy * np.cos(angle)) / period
            w = ((np.floor(u) + np.floor(v)) % 2).astype(np.float64)
        img = c1 * w[..., None] + c2 * (1 - w[..., None])
    else:  # blobs over a linear gradient
        g = np.clip(xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1) + 0.5, 0, 1)[..., None]
        img = c1 * g + c2 * (1 - g)
        for _ in range(int(rng.integers(2, 6))):
            centre, radius, color = rng.random(2), rng.uniform(0.05, 0.3), rng.random(3)
            blob = np.exp(-((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / (2 * radius ** 2))[..., None]
            img = img * (1 - blob) + color * blob
    img = img + rng.normal(0.0, rng.uniform(0.0, 0.04), size=img.shape)
    return np.clip(img, 0.0, 1.0)


# ----------------------------------------------------------------------------- sequences
@dataclasses.dataclass(frozen=True)
class HandRig:
    """What the sampler needs to know about the (right) hand model.

    num_betas; rest_vertices (V, 3), rest_normals (V, 3) of the mean shape;
    space: :class:`PoseSpace`; centroid_fn(pose (T, 48), betas (T, B)) -> (T, 3): mean
    vertex of the posed right hand with zero translation (a MANO forward pass).
    """

    num_betas: int
    centroid_fn: Callable[[np.ndarray, np.ndarray], np.ndarray]
    rest_vertices: np.ndarray
    rest_normals: np.ndarray
    space: PoseSpace

    @staticmethod
    def from_arrays(arrays: Dict[str, np.ndarray], centroid_fn) -> "HandRig":
        """From official-layout MANO arrays of a right hand (``builtin_mano_arrays('right')``)."""
        v = np.asarray(arrays["v_template"], np.float64)
        reg = np.asarray(arrays["J_regressor"], np.float64)
        faces = np.asarray(arrays["f"]).astype(np.int64)
        shapedirs = np.asarray(arrays["shapedirs"])
        normals = np.zeros_like(v)
        fn = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])
        for k in range(3):
            np.add.at(normals, faces[:, k], fn)
        normals = _unit(normals + 1e-12)
        return HandRig(
            num_betas=shapedirs.shape[-1],
            centroid_fn=centroid_fn,
            rest_vertices=v,
            rest_normals=normals,
            space=PoseSpace.from_rest(reg @ v, v),
        )


@dataclasses.dataclass(frozen=True)
class SceneConfig:
    """Size / sampling knobs of the generator (all sequences of one split share them)."""

    frames: int
    image_size: int
    annotate_every: int = 4
    betas_clip: float = 2.5
    left_fraction: float = 0.5


def sample_sequence(rng: np.random.Generator, rig: HandRig, cfg: SceneConfig) -> Dict[str, np.ndarray]:
    """All per-frame scene parameters of one sequence (T = cfg.frames, S = cfg.image_size).

    Returns float32 arrays: pose (T, 48), betas (T, 10), transl (T, 3), K (T, 3, 3),
    colors (V, 3), light_dir (3,), light_color (3,), ambient (), diffuse (), noise_std (),
    background (S, S, 3) in [0, 1]; plus is_right (bool) and annotated (T,) bool.
    """
    T, S = cfg.frames, cfg.image_size
    space = rig.space
    betas = np.clip(rng.normal(size=rig.num_betas), -cfg.betas_clip, cfg.betas_clip)
    hand_pose = sample_hand_poses(rng, space, T)
    rot, centre_frac, depth = sample_global_motion(rng, space, T)
    # Per-sequence pinhole camera (fx = fy): the hand spans `fill` of the image at mean depth.
    fill = rng.uniform(0.55, 0.9)
    focal = fill * S * float(np.mean(depth)) / HAND_LENGTH_M
    cx, cy = (S - 1) / 2.0 + rng.normal(0.0, 0.02 * S, size=2)
    K = np.array([[focal, 0.0, cx], [0.0, focal, cy], [0.0, 0.0, 1.0]])
    # Translate so that the posed hand's mean vertex lands on the sampled image point and depth.
    pose = np.concatenate([matrix_to_axis_angle(rot), hand_pose], axis=1)
    pix = centre_frac * S
    centre_cam = np.stack([(pix[:, 0] - cx) / focal, (pix[:, 1] - cy) / focal, np.ones(T)], -1) * depth[:, None]
    betas_t = np.repeat(betas[None], T, axis=0)
    transl = centre_cam - np.asarray(rig.centroid_fn(pose.astype(np.float32), betas_t.astype(np.float32)))
    is_right = bool(rng.random() >= cfg.left_fraction)
    if not is_right:  # the mirror image of the sampled right-hand scene
        pose = (pose.reshape(T, 16, 3) * np.array([1.0, -1.0, -1.0])).reshape(T, 48)
        transl = transl * np.array([-1.0, 1.0, 1.0])
    light = np.array([rng.uniform(-1, 1), rng.uniform(-1, 1), -rng.uniform(0.4, 1.5)])
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    return {
        "pose": f32(pose),
        "betas": f32(betas_t),
        "transl": f32(transl),
        "K": f32(np.repeat(K[None], T, axis=0)),
        "colors": f32(sample_skin_colors(rng, rig.rest_vertices, rig.rest_normals, space.palm)),
        "light_dir": f32(_unit(light)),
        "light_color": f32(1.0 + rng.normal(0.0, 0.05, size=3)),
        "ambient": f32(rng.uniform(0.35, 0.6)),
        "diffuse": f32(rng.uniform(0.45, 0.8)),
        "noise_std": f32(rng.uniform(0.0, 0.02)),
        "background": f32(sample_background(rng, S)),
        "is_right": np.bool_(is_right),
        "annotated": annotated_flags(T, cfg.annotate_every),
    }


SPLIT_CODES = {"train": 0, "test": 1}


def sequence_rng(seed: int, split: str, number: int) -> np.random.Generator:
    """The generator of sequence ``number`` of ``split`` (independent of batching)."""
    if split not in SPLIT_CODES:
        raise ValueError(f"split must be one of {sorted(SPLIT_CODES)}, got {split!r}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), SPLIT_CODES[split], int(number)]))
