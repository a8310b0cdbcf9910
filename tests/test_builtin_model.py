"""Tests of the licence-free built-in hand model (handjax.mano.builtin).

Independent references: hand-written mesh checks (edge counting, Euler characteristic,
solid-angle winding numbers), HaMeR's 14 published MANO wrist-closing triangles, and the
PyTorch smplx MANO layer for loading / posing / left-right mirroring.
"""
from __future__ import annotations

import collections
import os
import pickle
import time

import numpy as np
import pytest

from handjax.mano import builtin as B

EXPECTED = {
    "v_template": ((778, 3), np.float64),
    "shapedirs": ((778, 3, 10), np.float64),
    "posedirs": ((778, 3, 135), np.float64),
    "J_regressor": ((16, 778), np.float64),
    "weights": ((778, 16), np.float64),
    "kintree_table": ((2, 16), np.int64),
    "J": ((16, 3), np.float64),
    "f": ((1538, 3), np.uint32),
    "hands_components": ((45, 45), np.float64),
    "hands_coeffs": ((1554, 45), np.float64),
    "hands_mean": ((45,), np.float64),
}
# Wrist-closing triangles published with HaMeR's renderer for the official MANO mesh
# (vertex ids are facts about MANO's topology): they close MANO's wrist with outward winding.
HAMER_WRIST_CAP = np.array([
    (92, 38, 234), (234, 38, 239), (38, 122, 239), (239, 122, 279), (122, 118, 279),
    (279, 118, 215), (118, 117, 215), (215, 117, 214), (117, 119, 214), (214, 119, 121),
    (119, 120, 121), (121, 120, 78), (120, 108, 78), (78, 108, 79)])
CHAINS = {"index": 0, "middle": 1, "pinky": 2, "ring": 3, "thumb": 4}
MIRROR = np.array([-1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def right():
    return B.builtin_mano_arrays("right")


@pytest.fixture(scope="module")
def left():
    return B.builtin_mano_arrays("left")


# ----------------------------------------------------------------------------- helpers
def directed_edges(faces):
    f = np.asarray(faces, dtype=np.int64)
    return np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])


def sealed(v, faces):
    """Append the wrist-boundary centroid and fan faces over the boundary (outward)."""
    e = directed_edges(faces)
    es = {tuple(x) for x in e}
    bnd = [tuple(x) for x in e if (x[1], x[0]) not in es]
    ids = sorted({i for edge in bnd for i in edge})
    v2 = np.vstack([v, v[ids].mean(axis=0)])
    fan = np.array([(b, a, len(v)) for a, b in bnd])
    return v2, np.vstack([np.asarray(faces, np.int64), fan])


def signed_volume(v, faces):
    t = v[faces]
    return np.einsum("ij,ij->i", t[:, 0], np.cross(t[:, 1], t[:, 2])).sum() / 6.0


def winding_numbers(points, v, faces):
    """Generalised winding number (Van Oosterom-Strackee solid angles) of points w.r.t. a mesh."""
    tri = v[faces]
    out = []
    for p in np.atleast_2d(points):
        a, b, c = (tri[:, k] - p for k in range(3))
        la, lb, lc = (np.linalg.norm(x, axis=1) for x in (a, b, c))
        num = np.einsum("ij,ij->i", a, np.cross(b, c))
        den = (la * lb * lc + np.einsum("ij,ij->i", a, b) * lc + np.einsum("ij,ij->i", b, c) * la
               + np.einsum("ij,ij->i", c, a) * lb)
        out.append(2.0 * np.arctan2(num, den).sum() / (4 * np.pi))
    return np.array(out)


def chain_vertices(a, chain):
    joints = [1 + 3 * chain, 2 + 3 * chain, 3 + 3 * chain]
    return np.flatnonzero(np.isin(a["weights"].argmax(axis=1), joints))


def write_pickle(folder, name, a):
    with open(os.path.join(folder, name), "wb") as fh:
        pickle.dump({k: v for k, v in a.items()}, fh)


# ----------------------------------------------------------------------------- layout
@pytest.mark.parametrize("side", ["right", "left"])
def test_keys_shapes_dtypes(side):
    a = B.builtin_mano_arrays(side)
    assert set(a) == set(EXPECTED) | {"bs_style", "bs_type"}
    for key, (shape, dtype) in EXPECTED.items():
        assert a[key].shape == shape, key
        assert a[key].dtype == dtype, key
        assert np.all(np.isfinite(a[key])), key
    assert a["bs_style"] == "lbs" and a["bs_type"] == "lrotmin"


def test_kintree(right):
    k = right["kintree_table"]
    assert k[0, 0] == 4294967295
    np.testing.assert_array_equal(k[0, 1:], [0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14])
    np.testing.assert_array_equal(k[1], np.arange(16))


def test_bad_side_is_rejected():
    with pytest.raises(ValueError, match="side must be 'right' or 'left'"):
        B.builtin_mano_arrays("both")


def test_weights_and_regressor_are_convex(right):
    for key, axis in (("weights", 1), ("J_regressor", 1)):
        m = right[key]
        assert m.min() >= 0.0, key
        np.testing.assert_allclose(m.sum(axis=axis), 1.0, atol=1e-12, err_msg=key)
    np.testing.assert_allclose(right["J"], right["J_regressor"] @ right["v_template"], atol=1e-15)
    # every joint drives some vertices, and skinning is blended (not a hard partition)
    assert np.all(right["weights"].max(axis=0) > 0.9)
    assert np.sum(right["weights"].max(axis=1) < 0.9) > 50


def test_weights_vary_smoothly(right):
    """No hard part boundaries: across any edge no weight changes by more than 0.6
    (a hard boundary changes two weights by 1; a blend spans at least two edges)."""
    e = directed_edges(right["f"])
    jump = np.abs(right["weights"][e[:, 0]] - right["weights"][e[:, 1]])
    assert jump.max() <= 0.6


# ----------------------------------------------------------------------------- topology
def test_mesh_is_a_consistently_oriented_disk(right):
    f = right["f"].astype(np.int64)
    assert np.all((f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2]))
    assert set(np.unique(f)) == set(range(778))
    e = directed_edges(f)
    counts = collections.Counter(map(tuple, e))
    assert max(counts.values()) == 1  # no directed edge twice: consistent orientation
    undirected = collections.Counter(tuple(sorted(x)) for x in e)
    assert set(undirected.values()) <= {1, 2}  # manifold edges
    n_edges = len(undirected)
    assert 778 - n_edges + 1538 == 1  # Euler characteristic of a disk
    boundary = [x for x in counts if (x[1], x[0]) not in counts]
    assert len(boundary) == 16 and sum(c == 1 for c in undirected.values()) == 16
    # the boundary is one loop: the wrist ids in MANO's cyclic order, either direction
    nxt = dict(boundary)
    loop = [boundary[0][0]]
    while nxt[loop[-1]] != loop[0]:
        loop.append(nxt[loop[-1]])
    assert len(loop) == 16
    ref = list(B.WRIST_BOUNDARY_IDS)
    assert any(loop == ref[s:] + ref[:s] or loop[::-1] == ref[s:] + ref[:s] for s in range(16))
    # vertex manifoldness: each vertex's link is a single cycle (interior) or path (boundary)
    link = collections.defaultdict(dict)
    for a, b, c in f:
        link[a][b] = c
        link[b][c] = a
        link[c][a] = b
    bset = set(B.WRIST_BOUNDARY_IDS)
    for vtx, nbr in link.items():
        start = next(iter(nbr)) if vtx not in bset else (set(nbr) - set(nbr.values())).pop()
        seen, cur = {start}, start
        while cur in nbr and nbr[cur] not in seen:
            cur = nbr[cur]
            seen.add(cur)
        assert len(seen) == len(set(nbr) | set(nbr.values())), vtx
    # connected
    adj = collections.defaultdict(set)
    for a, b in e:
        adj[a].add(b)
        adj[b].add(a)
    stack, seen = [0], {0}
    while stack:
        for n in adj[stack.pop()] - seen:
            seen.add(n)
            stack.append(n)
    assert len(seen) == 778


def test_wrist_winding_matches_mano(right):
    """MANO's faces run the wrist loop against the listed order; HaMeR's cap closes it."""
    es = set(map(tuple, directed_edges(right["f"])))
    ref = B.WRIST_BOUNDARY_IDS
    assert all((ref[(i + 1) % 16], ref[i]) in es for i in range(16))
    closed = np.vstack([right["f"].astype(np.int64), HAMER_WRIST_CAP])
    counts = collections.Counter(map(tuple, directed_edges(closed)))
    assert max(counts.values()) == 1 and all((b, a) in counts for a, b in counts)


@pytest.mark.parametrize("side", ["right", "left"])
def test_normals_point_outwards(side):
    a = B.builtin_mano_arrays(side)
    v2, f2 = sealed(a["v_template"], a["f"])
    vol = signed_volume(v2 - v2.mean(axis=0), f2)
    assert 2.0e-4 < vol < 6.0e-4  # m^3; an adult hand is a few hundred cm^3
    # every face normal points away from the local interior: a point just outside the
    # centroid of each face (along its normal) has winding number ~0
    rng = np.random.default_rng(0)
    pick = rng.choice(len(a["f"]), 60, replace=False)
    t = a["v_template"][a["f"][pick].astype(np.int64)]
    n = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    outside = winding_numbers(t.mean(axis=1) + 1e-4 * n, v2, f2)
    inside = winding_numbers(t.mean(axis=1) - 1e-4 * n, v2, f2)
    assert np.all(np.abs(outside) < 0.1) and np.all(np.abs(inside - 1) < 0.1)


def test_no_self_overlap(right):
    """Winding numbers of random points are 0 or 1 only: no part pierces another."""
    v2, f2 = sealed(right["v_template"], right["f"])
    rng = np.random.default_rng(1)
    pts = rng.uniform(v2.min(axis=0), v2.max(axis=0), size=(1500, 3))
    w = winding_numbers(pts, v2, f2)
    near = np.abs(w - np.round(w)) > 1e-3  # points numerically on the surface
    assert near.mean() < 0.01
    assert set(np.round(w[~near]).astype(int)) <= {0, 1}
    assert 0.05 < np.mean(np.round(w) == 1) < 0.6


# ----------------------------------------------------------------------------- plausibility
def test_hand_dimensions(right):
    v, J = right["v_template"], right["J"]
    assert np.linalg.norm(J[0]) < 0.01  # wrist joint near the origin
    middle_tip = v[list(B.TIP_VERTEX_IDS["middle"])]
    length = (middle_tip[:, 0] - J[0, 0]).max()
    assert 0.17 < length < 0.20
    not_thumb = ~np.isin(right["weights"].argmax(axis=1), [13, 14, 15])
    knuckles = v[not_thumb & (np.abs(v[:, 0] - J[4, 0]) < 0.01)]
    assert 0.07 < np.ptp(knuckles[:, 2]) < 0.09  # palm width across the knuckles
    assert 0.02 < np.ptp(v[:, 1]) < 0.06         # flat hand: a few cm thick
    # fingers extend along +x and the thumb lies towards +z (right hand)
    assert all(J[3 + 3 * c, 0] > J[1 + 3 * c, 0] + 0.04 for c in range(4))
    assert J[15, 2] > J[1, 2] + 0.02


@pytest.mark.parametrize("side", ["right", "left"])
def test_chirality(side):
    """Fingers curl (MANO: +z axis-angle on the right, mirrored (-z) on the left) towards
    the palm, and for a right hand the palm normal is (thumb side) x (finger direction)."""
    a = B.builtin_mano_arrays(side)
    J = a["J"]
    along = J[5] - J[4]            # middle finger direction
    thumb_side = J[1] - J[7]       # pinky1 -> index1
    curl_axis = [0.0, 0.0, 1.0] if side == "right" else [0.0, 0.0, -1.0]
    curl = rot(curl_axis, 0.5) @ along - along
    handedness = np.dot(np.cross(thumb_side, along), curl)
    assert handedness > 0 if side == "right" else handedness < 0
    # the mean pose curls too: its finger axis-angles are along the curl axis
    mean = a["hands_mean"].reshape(15, 3)[:12]
    assert np.all(mean @ np.array(curl_axis) > 0.05)


def test_bones_and_joint_order(right):
    J = right["J"]
    for c in range(5):
        j1, j2, j3 = J[1 + 3 * c], J[2 + 3 * c], J[3 + 3 * c]
        d = [np.linalg.norm(j1 - J[0]), np.linalg.norm(j2 - J[0]), np.linalg.norm(j3 - J[0])]
        assert d[0] < d[1] < d[2]
        for bone in (np.linalg.norm(j2 - j1), np.linalg.norm(j3 - j2)):
            assert 0.015 < bone < 0.055
    assert 0.06 < np.linalg.norm(J[4] - J[0]) < 0.11  # wrist to middle knuckle


def test_joints_lie_inside_the_hand(right):
    v2, f2 = sealed(right["v_template"], right["f"])
    np.testing.assert_allclose(winding_numbers(right["J"], v2, f2), 1.0, atol=1e-6)
    # finger joints sit near the tube axis: every vertex of the joint's cross-section slab
    # is 4-15 mm away
    v = right["v_template"]
    for c in range(4):
        axis = right["J"][3 + 3 * c] - right["J"][1 + 3 * c]
        axis /= np.linalg.norm(axis)
        own = chain_vertices(right, c)
        for j in (2 + 3 * c, 3 + 3 * c):
            rel = v[own] - right["J"][j]
            slab = np.abs(rel @ axis) < 0.002
            r = np.linalg.norm(rel[slab] - np.outer(rel[slab] @ axis, axis), axis=1)
            assert slab.sum() >= 8 and r.min() > 0.004 and r.max() < 0.015, (c, j)


@pytest.mark.parametrize("finger", list(B.TIP_VERTEX_IDS))
def test_tip_ids_are_at_the_finger_end(right, finger):
    c = CHAINS[finger]
    J, v = right["J"], right["v_template"]
    axis = J[3 + 3 * c] - J[2 + 3 * c]  # direction of the distal bone
    axis /= np.linalg.norm(axis)
    own = chain_vertices(right, c)
    ext = (v - J[0]) @ axis
    tips = np.array(B.TIP_VERTEX_IDS[finger])
    assert set(tips) <= set(own)
    assert np.argmax(np.where(np.isin(np.arange(778), own), ext, -np.inf)) in tips
    assert np.all(ext[tips] > ext[own].max() - 0.003)
    assert np.all(right["weights"][tips, 3 + 3 * c] > 0.99)


def test_vertex_ids_follow_mano_parts(right):
    """Tip-segment vertices use MANO's tip-segment id ranges (DIGIT part table)."""
    part = np.asarray(B.DIGIT_JOINT_TO_PART)[right["weights"].argmax(axis=1)]
    for label, lo, hi in ((5, 517, 578), (6, 634, 695), (12, 707, 768), (4, 414, 467)):
        ids = np.flatnonzero(part == label)
        assert ids.min() >= lo and ids.max() <= hi, label


# ----------------------------------------------------------------------------- blend shapes
def face_normals(v, f):
    t = v[f.astype(np.int64)]
    return np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])


def test_shapedirs_magnitude_smoothness_orthogonality(right):
    v, S, f = right["v_template"], right["shapedirs"], right["f"]
    edges = directed_edges(f)
    rest_len = np.linalg.norm(v[edges[:, 0]] - v[edges[:, 1]], axis=1)
    rest_n = face_normals(v, f)
    for i in range(10):
        d = S[:, :, i]
        peak = np.linalg.norm(2.0 * d, axis=1).max()
        assert 0.003 < peak < 0.015, i  # beta = 2 moves the hand by several mm, ~1 cm
        for beta in (-2.0, 2.0):
            # smooth fields keep the mesh intact; random noise of the same peak
            # (edge ratios ~0.2-3) would tear it and fold faces over
            w = v + beta * d
            ratio = np.linalg.norm(w[edges[:, 0]] - w[edges[:, 1]], axis=1) / rest_len
            assert 0.4 < ratio.min() and ratio.max() < 2.0, (i, beta)
            assert np.all(np.einsum("ij,ij->i", face_normals(w, f), rest_n) > 0), (i, beta)
    flat = S.reshape(-1, 10)
    gram = flat.T @ flat
    cos = gram / np.sqrt(np.outer(np.diag(gram), np.diag(gram)))
    assert np.abs(cos - np.eye(10)).max() < 0.3


def test_first_shape_direction_scales_the_hand(right):
    v, S = right["v_template"], right["shapedirs"]
    big, small = v + 2 * S[:, :, 0], v - 2 * S[:, :, 0]
    assert np.ptp(big[:, 0]) > np.ptp(v[:, 0]) + 0.003 > np.ptp(small[:, 0]) + 0.006
    Jb = right["J_regressor"] @ big
    assert np.linalg.norm(Jb[6] - Jb[0]) > np.linalg.norm(right["J"][6] - right["J"][0])


def rot(axis, angle):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def pose_offsets(a, rotations):
    """Vertex offsets of posedirs for {joint: R} (others identity), smplx's formula."""
    feat = np.zeros((15, 3, 3))
    for j, R in rotations.items():
        feat[j - 1] = R - np.eye(3)
    return np.einsum("vcp,p->vc", a["posedirs"], feat.reshape(-1))


def test_posedirs_are_small_local_and_outward(right):
    v, J = right["v_template"], right["J"]
    off = pose_offsets(right, {2: rot([0, 0, 1], np.pi / 2)})  # bend index PIP by 90 degrees
    mag = np.linalg.norm(off, axis=1)
    assert 0.0005 < mag.max() < 0.008
    moved = mag > 0.1 * mag.max()
    assert np.all(np.linalg.norm(v[moved] - J[2], axis=1) < 0.03)
    # the rotation-invariant part is a bulge: a pure twist about the bone moves skin outwards
    twist = pose_offsets(right, {2: rot(J[3] - J[2], 0.8)})
    rel = v - J[2]
    outward = np.einsum("ij,ij->i", twist, rel) >= -1e-12
    assert np.all(outward[np.linalg.norm(twist, axis=1) > 1e-6])


# ----------------------------------------------------------------------------- pose space
def test_pose_space(right):
    C = right["hands_components"]
    np.testing.assert_allclose(C @ C.T, np.eye(45), atol=1e-12)
    # first component = whole-hand curl: every finger joint flexes about its lateral axis,
    # +z up to the finger's splay (< 15 degrees)
    first = C[0].reshape(15, 3)
    assert np.all(first[:12, 2] > 0.1)
    assert np.all(np.linalg.norm(first[:12, :2], axis=1) < np.tan(np.deg2rad(15)) * first[:12, 2])
    mean = right["hands_mean"].reshape(15, 3)
    assert np.all(mean[:12, 2] > 0.05) and np.all(np.abs(mean) < 0.5)
    coeffs = right["hands_coeffs"]
    np.testing.assert_allclose(coeffs.mean(axis=0), 0.0, atol=1e-12)
    sd = coeffs.std(axis=0)
    assert sd[0] > sd[10] > sd[40] and sd[0] < 1.5
    poses = right["hands_mean"] + coeffs @ C
    assert np.percentile(np.abs(poses), 99) < 1.5  # radians: plausible articulations


# ----------------------------------------------------------------------------- mirroring
def test_left_is_the_mirrored_right(right, left):
    np.testing.assert_array_equal(left["v_template"], right["v_template"] * MIRROR)
    np.testing.assert_array_equal(left["J"], right["J"] * MIRROR)
    np.testing.assert_array_equal(left["shapedirs"], right["shapedirs"] * MIRROR[None, :, None])
    np.testing.assert_array_equal(left["f"], right["f"][:, [0, 2, 1]])
    for key in ("weights", "J_regressor", "kintree_table", "hands_coeffs"):
        np.testing.assert_array_equal(left[key], right[key])
    flip = np.tile([1.0, -1.0, -1.0], 15)
    np.testing.assert_array_equal(left["hands_mean"], right["hands_mean"] * flip)
    np.testing.assert_array_equal(left["hands_components"], right["hands_components"] * flip)
    # posedirs: posing the left hand with M R M gives the mirrored corrective of R
    M = np.diag(MIRROR)
    R = {2: rot([0.3, -0.2, 1.0], 1.1), 14: rot([1.0, 0.5, 0.2], 0.7)}
    off_r = pose_offsets(right, R)
    off_l = pose_offsets(left, {j: M @ r @ M for j, r in R.items()})
    np.testing.assert_allclose(off_l, off_r * MIRROR, atol=1e-15)


def test_smplx_loads_poses_and_mirrors(right, left, tmp_path):
    torch = pytest.importorskip("torch")
    smplx = pytest.importorskip("smplx")
    write_pickle(tmp_path, "MANO_RIGHT.pkl", right)
    write_pickle(tmp_path, "MANO_LEFT.pkl", left)
    rng = np.random.default_rng(7)
    pose = rng.normal(0, 0.4, (2, 45))
    orient = rng.normal(0, 0.5, (2, 3))
    betas = rng.normal(0, 1.0, (2, 10))
    t = lambda x: torch.tensor(x, dtype=torch.float32)  # noqa: E731
    out = {}
    for side, is_r in (("right", True), ("left", False)):
        m = smplx.MANO(model_path=str(tmp_path), is_rhand=is_r, use_pca=False, flat_hand_mean=True)
        flip = np.array([1.0, -1.0, -1.0]) if side == "left" else np.ones(3)
        res = m(hand_pose=t(pose * np.tile(flip, 15)), global_orient=t(orient * flip), betas=t(betas))
        out[side] = res.vertices.detach().numpy().astype(np.float64)
    assert out["right"].shape == (2, 778, 3) and np.all(np.isfinite(out["right"]))
    assert np.abs(out["right"] - right["v_template"]).max() > 0.01  # the pose did something
    np.testing.assert_allclose(out["left"], out["right"] * MIRROR, atol=2e-6)
    # zero pose, zero shape: smplx joints = J_regressor @ v_template = J
    m = smplx.MANO(model_path=str(tmp_path), is_rhand=True, use_pca=False, flat_hand_mean=True)
    rest = m(hand_pose=torch.zeros(1, 45), global_orient=torch.zeros(1, 3), betas=torch.zeros(1, 10))
    np.testing.assert_allclose(rest.joints[0].detach().numpy(), right["J"], atol=2e-6)
    np.testing.assert_allclose(rest.vertices[0].detach().numpy(), right["v_template"], atol=2e-6)
    # PCA path with the mean pose: the same coefficients give mirrored hands
    coeffs = t(rng.normal(0, 1.0, (1, 12)))
    pca = {}
    for side, is_r in (("right", True), ("left", False)):
        m = smplx.MANO(model_path=str(tmp_path), is_rhand=is_r, use_pca=True, num_pca_comps=12,
                       flat_hand_mean=False)
        pca[side] = m(hand_pose=coeffs, global_orient=torch.zeros(1, 3)).vertices.detach().numpy()
    np.testing.assert_allclose(pca["left"], pca["right"] * MIRROR, atol=2e-6)


# ----------------------------------------------------------------------------- part labels
def test_face_part_labels(right):
    f = right["f"].astype(np.int64)
    labels = B.face_part_labels(f, right["weights"])
    assert labels.shape == (1538,) and labels.dtype == np.int64
    assert set(labels) == set(range(16))
    wrist = np.isin(f, B.WRIST_BOUNDARY_IDS).any(axis=1)
    assert np.all(labels[wrist] == 8)
    for finger, label in (("index", 11), ("middle", 4), ("ring", 5), ("pinky", 6), ("thumb", 12)):
        at_tip = np.isin(f, B.TIP_VERTEX_IDS[finger]).any(axis=1)
        assert np.all(labels[at_tip] == label), finger
    # hand-computed case: the summed weights pick joint 2 (index2 -> label 1)
    w = np.zeros((3, 16))
    w[0, 2], w[1, 1], w[2, [1, 2]] = 1.0, 1.0, (0.4, 0.6)
    assert B.face_part_labels(np.array([[0, 1, 2]]), w).tolist() == [1]
    with pytest.raises(ValueError, match="faces"):
        B.face_part_labels(np.zeros((2, 4), np.int64), right["weights"])
    with pytest.raises(ValueError, match="weights"):
        B.face_part_labels(f, right["weights"][:, :15])
    with pytest.raises(ValueError, match="face ids"):
        B.face_part_labels(np.array([[0, 1, 900]]), right["weights"])


# ----------------------------------------------------------------------------- determinism
def test_deterministic_cached_copies_and_fast():
    a = B.builtin_mano_arrays("right")
    a["v_template"][0] = 99.0
    b = B.builtin_mano_arrays("right")
    assert b["v_template"][0, 0] != 99.0
    start = time.perf_counter()
    fresh_r = B._right_arrays()
    fresh_l = B._mirror_arrays(fresh_r)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0
    for fresh, side in ((fresh_r, "right"), (fresh_l, "left")):
        cached = B.builtin_mano_arrays(side)
        for k, val in fresh.items():
            if isinstance(val, np.ndarray):
                np.testing.assert_array_equal(val, cached[k], err_msg=k)
            else:
                assert val == cached[k]
