"""Random scene parameters of the ``hand_object`` dataset: a right hand holding a rigid object
(pure numpy, no rendering).

A sequence starts from a ``synthetic_hands`` hand sequence (global motion, camera, skin,
light, background; right hands only, as handobjectconsist uses), replaces the finger poses
by grasp poses (moderately curled fingers, opposed thumb) and attaches one procedural object
(:mod:`.objects`) in front of the palm:

* in the hand model frame the object centre sits on the palm normal through the palm centre
  (mean of the wrist and the four finger MCP joints, shaped rest pose), touching the palm
  surface (its support distance along the normal plus a gap of 0-1 cm); its long axis lies
  across the palm (thumb -> little finger direction), tilted in the palm plane and spun
  about itself at random;
* a small smooth drift of that relative pose (a few degrees, a few millimetres; Catmull-Rom
  keys) lets the object slip slightly in the grasp;
* camera frame: ``R_obj = R0 R_rel`` and ``t_obj = R0 (c_rel - J0) + J0 + transl``, with R0
  the MANO global orientation and J0 the shaped rest wrist joint, i.e. the object follows
  the hand's root motion exactly as a point of the palm does (the MCP joints are children
  of the root only).

Object labels: ``object_rot`` (3, 3) and ``object_transl`` (3,) map canonical object points
to the camera frame, ``object_vertices = canonical @ object_rot.T + object_transl``.
"""
from __future__ import annotations

import dataclasses
from typing import Dict

import numpy as np

from data_pipelines.synthetic_hands import scene as hand_scene
from handjax.geometry.rotations import axis_angle_to_matrix

from . import objects

SPLIT_CODES = {"train": 0, "test": 1}
# Palm centre: mean of the wrist and the MCP joints of index, middle, pinky, ring (MANO ids).
PALM_JOINTS = (0, 1, 4, 7, 10)
# Palm vertices whose offset along the palm normal gives the palm surface: within this
# in-plane distance (m) of the palm centre.
PALM_RADIUS = 0.03
# Focal length multiplier range: the synthetic_hands camera frames the hand alone; zooming out
# keeps the held object in the frame too.
ZOOM = (0.6, 0.8)


@dataclasses.dataclass(frozen=True)
class ShapeModel:
    """What the object placement needs of the (right) hand model: v_template (V, 3),
    shapedirs (V, 3, B) and J_regressor (J, V), float64."""

    v_template: np.ndarray
    shapedirs: np.ndarray
    j_regressor: np.ndarray

    @staticmethod
    def from_arrays(arrays) -> "ShapeModel":
        return ShapeModel(np.asarray(arrays["v_template"], np.float64), np.asarray(arrays["shapedirs"], np.float64),
                          np.asarray(arrays["J_regressor"], np.float64))

    def rest(self, betas: np.ndarray):
        """Shaped rest vertices (V, 3) and joints (J, 3) for betas (B,)."""
        v = self.v_template + self.shapedirs @ np.asarray(betas, np.float64)
        return v, self.j_regressor @ v


def _unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _grasp_angles(rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """One grasp key pose: per chain (3 joints, [flex, radial, twist]) radians (the layout of
    ``synthetic_hands.scene``): fingers curled 25-65 %, little spread, thumb opposed."""
    grasp = rng.uniform(0.25, 0.65)
    out = {}
    for name in hand_scene.FINGER_CHAINS:
        curl = np.clip(grasp + rng.normal(0.0, 0.08), 0.1, 0.8)
        ang = np.zeros((3, 3))
        ang[:, 0] = np.deg2rad([80.0 * curl, 95.0 * curl, 60.0 * curl]) + np.deg2rad(rng.normal(0, 3, size=3))
        ang[0, 1] = np.deg2rad(hand_scene.SPREAD_DEG[name] * rng.uniform(-0.1, 0.4) + rng.normal(0, 2))
        ang[:, 2] = np.deg2rad(rng.normal(0, 2, size=3))
        out[name] = ang
    oppose = rng.uniform(0.5, 1.0)
    ang = np.zeros((3, 3))
    ang[0] = np.deg2rad((15.0 * oppose + rng.normal(0, 3), -25.0 * oppose + rng.normal(0, 4), 30.0 * oppose))
    ang[1, 0] = np.deg2rad(40.0 * grasp + rng.normal(0, 4))
    ang[2, 0] = np.deg2rad(50.0 * grasp + rng.normal(0, 4))
    out["thumb"] = ang
    return out


def sample_grasp_poses(rng: np.random.Generator, space: hand_scene.PoseSpace, frames: int) -> np.ndarray:
    """(frames, 45) smooth right-hand grasp finger poses (axis-angle, flat mean)."""
    n_keys = int(np.clip(round(frames / 6) + 1, 2, 5))
    keys = [_grasp_angles(rng) for _ in range(n_keys)]
    names = sorted(keys[0])
    flat = np.stack([np.concatenate([k[n].reshape(-1) for n in names]) for k in keys])
    path = hand_scene.catmull_rom(flat, frames)
    return np.stack([hand_scene.angles_to_hand_pose(space, {n: c.reshape(3, 3) for n, c in
                                                              zip(names, np.split(row, len(names)))})
                     for row in path])


def palm_frame(shape: ShapeModel, space: hand_scene.PoseSpace, betas: np.ndarray):
    """(palm centre (3,), palm surface offset along the palm normal (m), wrist J0 (3,)) of the
    shaped right hand in the model frame (rest pose)."""
    verts, joints = shape.rest(betas)
    centre = joints[list(PALM_JOINTS)].mean(axis=0)
    rel = verts - centre
    along = rel @ space.palm
    in_plane = np.linalg.norm(rel - along[:, None] * space.palm, axis=1)
    surface = float(np.max(along[in_plane < PALM_RADIUS]))
    return centre, surface, joints[0]


def relative_object_path(rng: np.random.Generator, space: hand_scene.PoseSpace, canonical: np.ndarray,
                         centre: np.ndarray, surface: float, frames: int):
    """Object pose in the hand model frame over a sequence: rotations (T, 3, 3) and centres
    (T, 3), the object touching the palm (support distance along the palm normal + gap)."""
    base = np.stack([space.palm, space.radial, space.forward], axis=1)  # object x, y, z in the model frame
    tilt = axis_angle_to_matrix(space.palm * rng.uniform(-0.5, 0.5))
    spin = axis_angle_to_matrix(np.array([0.0, rng.uniform(0.0, 2.0 * np.pi), 0.0]))
    rest = tilt @ base @ spin
    n_keys = int(np.clip(round(frames / 6) + 1, 2, 5))
    keys = np.concatenate([rng.uniform(-0.1, 0.1, size=(n_keys, 3)),        # object-frame rotation, rad
                           rng.uniform(-0.004, 0.004, size=(n_keys, 2))], 1)  # in-plane slip, m
    drift = hand_scene.catmull_rom(keys, frames)
    rot = rest @ axis_angle_to_matrix(drift[:, :3])
    gap = rng.uniform(0.0, 0.01)
    # support distance: how far the object reaches back towards the palm along -normal
    support = np.max(-(canonical @ np.swapaxes(rot, 1, 2)) @ space.palm, axis=1)
    centres = (centre + (surface + gap + support)[:, None] * space.palm
               + drift[:, 3:4] * space.radial + drift[:, 4:5] * space.forward)
    return rot, centres


def sample_object_texture(rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """Procedural texture parameters (see :func:`objects.procedural_albedo`): two colours
    whose channels lie in opposite ranges [0, 0.4] / [0.6, 1] (contrast >= 0.2 per channel),
    checker cell 1-2 cm, a sinusoid of 40-120 rad/m."""
    lo, hi = 0.4 * rng.random(3), 0.6 + 0.4 * rng.random(3)
    swap = rng.random(3) < 0.5
    a, b = np.where(swap, hi, lo), np.where(swap, lo, hi)
    wave = np.concatenate([_unit(rng.normal(size=3)) * rng.uniform(40.0, 120.0), [rng.uniform(0, 2 * np.pi)]])
    return {"tex_a": a, "tex_b": b, "tex_cell": np.float64(rng.uniform(0.01, 0.02)), "tex_wave": wave}


def sample_sequence(rng: np.random.Generator, rig: hand_scene.HandRig, shape: ShapeModel,
                    meshes: Dict[str, np.ndarray], frames: int, image_size: int, annotate_every: int
                    ) -> Dict[str, np.ndarray]:
    """All per-frame scene parameters of one hand-object sequence (T = frames).

    Returns the hand entries of ``synthetic_hands.scene.sample_sequence`` (pose (T, 48),
    betas (T, 10), transl (T, 3), K (T, 3, 3), colors, light_dir, light_color, ambient,
    diffuse, noise_std, background, is_right (always True), annotated (T,)) plus
    object_id () int64, object_rot (T, 3, 3), object_transl (T, 3), object_vertices
    (T, NUM_VERTICES, 3), tex_a (3,), tex_b (3,), tex_cell (), tex_wave (4,); float32.
    """
    cfg = hand_scene.SceneConfig(frames=frames, image_size=image_size, annotate_every=annotate_every,
                                 left_fraction=0.0)
    seq = hand_scene.sample_sequence(rng, rig, cfg)
    pose, betas = seq["pose"].astype(np.float64), seq["betas"]
    # Grasping fingers; re-centre the hand on the same image point (transl compensates the centroid).
    before = np.asarray(rig.centroid_fn(seq["pose"], betas), np.float64)
    pose[:, 3:] = sample_grasp_poses(rng, rig.space, frames)
    after = np.asarray(rig.centroid_fn(pose.astype(np.float32), betas), np.float64)
    transl = seq["transl"].astype(np.float64) + before - after
    K = seq["K"].astype(np.float64).copy()
    zoom = rng.uniform(*ZOOM)
    K[:, 0, 0] *= zoom
    K[:, 1, 1] *= zoom

    object_id = int(rng.integers(len(objects.OBJECT_NAMES)))
    canonical = np.asarray(meshes["vertices"][object_id], np.float64)
    centre, surface, wrist = palm_frame(shape, rig.space, betas[0].astype(np.float64))
    rel_rot, rel_centre = relative_object_path(rng, rig.space, canonical, centre, surface, frames)
    root = axis_angle_to_matrix(pose[:, :3])
    obj_rot = root @ rel_rot
    obj_transl = np.einsum("tij,tj->ti", root, rel_centre - wrist) + wrist + transl
    obj_verts = canonical @ np.swapaxes(obj_rot, 1, 2) + obj_transl[:, None]
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    seq.update(pose=f32(pose), transl=f32(transl), K=f32(K), object_id=np.int64(object_id),
               object_rot=f32(obj_rot), object_transl=f32(obj_transl), object_vertices=f32(obj_verts),
               **{k: f32(v) for k, v in sample_object_texture(rng).items()})
    return seq


def sequence_rng(seed: int, split: str, number: int) -> np.random.Generator:
    """The generator of sequence ``number`` of ``split`` (independent of batching); the
    stream differs from synthetic_hands' sequences of the same (seed, split, number)."""
    if split not in SPLIT_CODES:
        raise ValueError(f"split must be one of {sorted(SPLIT_CODES)}, got {split!r}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), SPLIT_CODES[split], int(number), 0x40B1]))
