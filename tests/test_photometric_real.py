"""handobjectconsist on the real datasets' formats: object-mesh readers (PLY / OBJ), the known-object table and
labels, and `python -m handjax.main` with `configs/photometric.py:recipe=fphab` / `recipe=ho3d` on tiny raw
folders in the real layouts (supervised -> consistency -> eval), the object error checked against an independent
numpy computation from the raw files."""
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from data_pipelines import object_models as om
from data_pipelines.manual import CorruptFileError
from object_model_fixtures import box_mesh, fan, write_fphab_models, write_ho3d_models, write_obj, write_ply

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# FPHAB colour-camera extrinsics (world mm -> camera mm), typed from the FPHAB README independently of the module
R_EXTR = np.array([[0.999988496304, -0.00468848412856, 0.000982563360594],
                   [0.00469115935266, 0.999985218048, -0.00273845880292],
                   [-0.000969709653873, 0.00274303671904, 0.99999576807]])
T_EXTR = np.array([25.7, 1.22, 3.902])


# ----------------------------------------------------------------------------- readers
@pytest.mark.parametrize("binary", [False, True])
def test_ply_reader_reads_vertices_and_triangulates(tmp_path, binary):
    verts, quads = box_mesh([0.1, 0.2, 0.3], [0.5, -0.2, 0.1], extra_vertices=2)
    path = tmp_path / "m.ply"
    write_ply(str(path), verts, quads, binary)
    v, f = om.read_ply(path)
    np.testing.assert_allclose(v, verts, atol=1e-7)  # float32 storage
    np.testing.assert_array_equal(f, fan(quads))


def test_ply_reader_errors_name_the_file(tmp_path):
    verts, quads = box_mesh([0.1, 0.1, 0.1], [0, 0, 0])
    path = tmp_path / "cut.ply"
    write_ply(str(path), verts, quads, binary=True)
    path.write_bytes(path.read_bytes()[:-60])  # truncated body
    with pytest.raises(CorruptFileError, match="cut.ply"):
        om.read_ply(path)
    bad = tmp_path / "noface.ply"
    bad.write_text("ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\n"
                   "property float z\nend_header\n0 0 0\n")
    with pytest.raises(CorruptFileError, match="noface.ply.*'face'"):
        om.read_ply(bad)
    with pytest.raises(CorruptFileError, match="x.ply.*not a PLY"):
        (tmp_path / "x.ply").write_text("solid stl\n")
        om.read_ply(tmp_path / "x.ply")


def test_obj_reader_with_texture_indices_and_negative_indices(tmp_path):
    verts, quads = box_mesh([0.1, 0.1, 0.2], [0, 0.1, 0])
    write_obj(str(tmp_path / "a.obj"), verts, quads)
    v, f = om.read_obj(tmp_path / "a.obj")
    np.testing.assert_allclose(v, verts, atol=1e-9)
    np.testing.assert_array_equal(f, fan(quads))
    (tmp_path / "b.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf -3//1 -2//1 -1//1\n")
    np.testing.assert_array_equal(om.read_obj(tmp_path / "b.obj")[1], [[0, 1, 2]])
    (tmp_path / "c.obj").write_text("v 0 0 0\nv 1 0 0\nf 1 2 5\n")
    with pytest.raises(CorruptFileError, match="c.obj.*face indices"):
        om.read_obj(tmp_path / "c.obj")


# ----------------------------------------------------------------------------- object tables and labels
def test_fphab_table_canonical_vertices_and_missing_files(tmp_path):
    models = write_fphab_models(str(tmp_path / "Object_models"))
    meshes = om.load_dataset_objects("fphab", tmp_path / "Object_models")
    assert meshes.names == ("juice_bottle", "liquid_soap", "milk", "salt")
    assert meshes.sources[0].endswith(os.path.join("juice_model", "juice_model.ply"))  # juice_bottle's folder
    for k, name in enumerate(meshes.names):
        v = models[name][0]
        centre = np.array([(v[:, i].min() + v[:, i].max()) / 2 for i in range(3)])
        np.testing.assert_allclose(meshes.canonical[k], v - centre, atol=1e-6)
    padded, valid = meshes.padded()
    assert padded.shape == (4, 11, 3) and valid.sum(1).tolist() == [8, 9, 10, 11]
    np.testing.assert_array_equal(padded[0, 8:], padded[0, :3])  # tiled
    # a missing model: the error names the path and the config key
    os.remove(tmp_path / "Object_models" / "milk_model" / "milk_model.ply")
    with pytest.raises(FileNotFoundError, match=r"(?s)data\.object_models.*milk_model/milk_model\.ply"):
        om.load_dataset_objects("fphab", tmp_path / "Object_models")


def test_object_labels_place_the_model_and_render_topology(tmp_path):
    write_ho3d_models(str(tmp_path / "models"), file_name="textured_simple.obj")  # the YCB release's file
    meshes = om.load_dataset_objects("ho3d", tmp_path / "models")
    rng = np.random.default_rng(0)
    rot = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    rot *= np.linalg.det(rot)
    t = np.array([0.02, -0.01, 0.5])
    k = meshes.index("011_banana")
    labels = om.object_labels(meshes, k, rot, t, True)
    n = meshes.num_vertices[k]
    model = meshes.canonical[k].astype(np.float64) + meshes.centres[k]  # model coordinates
    np.testing.assert_allclose(labels["object_vertices"][:n], model @ rot.T + t, atol=1e-6)
    assert labels["object_vertex_valid"].sum() == n and bool(labels["has_object"])
    np.testing.assert_allclose(labels["object_transl"], rot @ meshes.centres[k] + t, atol=1e-6)
    # render topology: a triangle soup as large as the largest object; a sample renders its own object's
    # triangles, the unused corners lie behind the camera
    faces, soup = meshes.render_topology()
    fmax = max(len(f) for f in meshes.faces)
    assert faces.shape == (fmax, 3) and soup.shape == (len(meshes), 3 * fmax)
    import jax.numpy as jnp

    from handjax.train.photometric import Parts

    padded, _ = meshes.padded()
    parts = Parts(None, None, jnp.asarray(padded), faces, None, 0, (8, 8), {}, object_soup=soup)
    verts = jnp.asarray(np.stack([labels["object_vertices"]] * 2))
    out = np.asarray(parts.render_object(verts, jnp.asarray([k, 0])))
    own = labels["object_vertices"][meshes.faces[k]]                       # (F_k, 3 corners, 3)
    tris = out[0][faces]                                                    # (fmax, 3, 3)
    np.testing.assert_allclose(tris[: len(own)], own, atol=1e-7)
    assert np.all(tris[len(own):, :, 2] < 0)


# ----------------------------------------------------------------------------- FPHAB skeleton adaptor
def write_adaptor(path, seed: int = 0, extra=None):
    """fhb_skel_centeridx9.pkl's format: adaptor (21, 778) float32 (tips one-hot on manopth's tip vertices, the
    other rows dense), shape (10,), opts with an argparse.Namespace (the fit's options), default protocol."""
    import argparse

    rng = np.random.default_rng(seed)
    adaptor = rng.normal(0, 0.01, (21, 778)).astype(np.float32)
    adaptor[:, :] += rng.dirichlet(np.full(778, 0.05), 21).astype(np.float32)
    for row, vid in zip((4, 8, 12, 16, 20), (745, 317, 444, 556, 673)):
        adaptor[row] = 0
        adaptor[row, vid] = 1
    data = {"adaptor": adaptor, "shape": rng.normal(0, 1, 10).astype(np.float32),
            "opts": {"optimizer": "sgd", "mano_ncomps": 30, "args": argparse.Namespace(center_idx=9, lr=0.1)}}
    data.update(extra or {})
    with open(path, "wb") as fh:
        pickle.dump(data, fh)
    return adaptor


def test_adaptor_pickle_is_read_restricted(tmp_path):
    from data_pipelines.fphab.layout import read_skeleton_adaptor
    from data_pipelines.manual import RestrictedPickleError

    a = write_adaptor(tmp_path / "fhb_skel_centeridx9.pkl")
    got = read_skeleton_adaptor(tmp_path / "fhb_skel_centeridx9.pkl")
    np.testing.assert_array_equal(got["adaptor"], a)
    assert got["adaptor"].dtype == np.float32 and got["shape"].shape == (10,)
    assert got["opts"]["args"].vars == {"center_idx": 9, "lr": 0.1}  # an inert stand-in, no argparse object
    # any other global is refused, naming the file and the global
    write_adaptor(tmp_path / "evil.pkl", extra={"y": subprocess.Popen})
    with pytest.raises(RestrictedPickleError, match=r"(?s)evil\.pkl.*subprocess\.Popen"):
        read_skeleton_adaptor(tmp_path / "evil.pkl")
    write_adaptor(tmp_path / "bad.pkl", extra={"adaptor": np.zeros((21, 779), np.float32)})
    with pytest.raises(CorruptFileError, match=r"bad\.pkl.*'adaptor'.*\(21, 779\)"):
        read_skeleton_adaptor(tmp_path / "bad.pkl")


def test_adaptor_config_key_fills_the_frozen_adaptor(tmp_path):
    import jax.numpy as jnp

    from handjax import mano
    from handjax.configs.photometric import get_config
    from handjax.models.meshregnet import UPSTREAM_PLACEMENT, decode, model_convention
    from handjax.train import photometric as P

    a = write_adaptor(tmp_path / "adaptor.pkl", seed=1)
    cfg = get_config("recipe=fphab")
    cfg.model.mano_neurons = (16, 16)
    cfg.mano.model_path = _mano(tmp_path)
    with pytest.raises(ValueError, match=r"model\.fhb_adaptor=True.*model\.fphab_adaptor"):
        P._check(cfg)  # FPHAB from scratch without the adaptor's values
    cfg.model.fphab_adaptor = str(tmp_path / "missing.pkl")
    with pytest.raises(ValueError, match=r"model\.fphab_adaptor=.*missing\.pkl"):
        P._check(cfg)
    cfg.model.fphab_adaptor = str(tmp_path / "adaptor.pkl")
    P._check(cfg)
    model = P.build_model(cfg)
    np.testing.assert_array_equal(np.asarray(P.adaptor_of(model)), a)
    # joints = adaptor(vertices), joints and vertices re-centred on adaptor joint 9, then placed at the root
    rng = np.random.default_rng(2)
    raw = {"pose": jnp.asarray(rng.normal(0, 0.5, (2, 18)), jnp.float32),
           "betas": jnp.asarray(rng.normal(0, 1, (2, 10)), jnp.float32),
           "hand_scaletrans": jnp.asarray([[1.0, 0.2, -0.1], [2.0, -0.3, 0.4]], jnp.float32),
           "obj_scaletrans": jnp.zeros((2, 6), jnp.float32)}
    K = jnp.asarray(np.tile([[350.0, 0, 240], [0, 350.0, 135], [0, 0, 1]], (2, 1, 1)), jnp.float32)
    hand = mano.load_model(cfg.mano.model_path, "right")
    out = decode(raw, K, (270, 480), hand, convention=model_convention("manopth"), adaptor=P.adaptor_of(model),
                 **UPSTREAM_PLACEMENT).hand
    s = np.asarray(raw["hand_scaletrans"], np.float64)
    z0 = 350.0 * s[:, 0] * 1e-4 + 0.4
    root = np.stack([(s[:, 1] * 100 + 240 - 240) * z0 / 350.0, (s[:, 2] * 100 + 135 - 135) * z0 / 350.0, z0], -1)
    plain = decode(raw, K, (270, 480), hand, convention=model_convention("manopth"), **UPSTREAM_PLACEMENT).hand
    verts_m = np.asarray(plain.vertices, np.float64) - root[:, None]  # MANO's vertices (centred on its joint 9)
    joints_a = np.einsum("jv,bvc->bjc", a.astype(np.float64), verts_m)
    centre = joints_a[:, 9:10]
    np.testing.assert_allclose(np.asarray(out.joints), joints_a - centre + root[:, None], atol=2e-6)
    np.testing.assert_allclose(np.asarray(out.vertices), verts_m - centre + root[:, None], atol=2e-6)
    np.testing.assert_allclose(np.asarray(out.joints)[:, 9], root, atol=2e-6)


# ----------------------------------------------------------------------------- end to end
def _env(devices: int = 2):
    return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")


def _mano(tmp_path):
    """A MANO_RIGHT.pkl (plain numpy dict, as the other real-data tests write): the built-in hand's arrays."""
    from handjax.mano.builtin import builtin_mano_arrays

    path = tmp_path / "MANO_RIGHT.pkl"
    with open(path, "wb") as fh:
        pickle.dump(builtin_mano_arrays("right"), fh, protocol=4)
    return str(path)


TINY = ["--config.data.image_size=32", "--config.model.mano_neurons=(32, 32)", "--config.sparse.fraction=1.0",
        "--config.supervised.num_steps=2", "--config.supervised.batch_size=2", "--config.supervised.log_every=1",
        "--config.consistency.num_steps=2", "--config.consistency.batch_size=2", "--config.consistency.log_every=1",
        "--config.consistency.ramp_steps=1", "--config.consistency.skip_annotated_queries=False",
        "--config.supervised.checkpoint_every=2", "--config.consistency.checkpoint_every=2",
        "--config.eval.batch_size=2"]


def _run(args, tmp_path):
    r = subprocess.run([sys.executable, "-m", "handjax.main", *args], cwd=ROOT, env=_env(), capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout, r.stderr


def _check_consistency_ran(out):
    lines = [line for line in out.splitlines() if line.startswith("[consistency] step")]
    assert lines and all(" consist " in line for line in lines)
    assert float(lines[-1].split("consist_pixels ")[1].split()[0]) > 0  # rendered hand + object pixels warped


@pytest.fixture(scope="module")
def fphab(tmp_path_factory):
    """A tiny FPHAB download (the builder tests' fixture) + object models + MANO fits for every sequence with
    object poses; the dataset is built on first use under ``data``."""
    from test_fphab_data import write_fphab

    tmp = tmp_path_factory.mktemp("fphab_photometric")
    raw = tmp / "raw"
    truth = write_fphab(str(raw))
    models = write_fphab_models(str(raw / "Object_models"))
    rng = np.random.default_rng(5)
    for (subject, action, seq), t in truth.items():
        if not t["poses"] or (raw / "fhbhands_fits" / subject / action / seq).exists():
            continue
        fits = {f"{f:06d}.pkl": {"fullpose": rng.normal(0, 0.2, 48).astype(np.float32),
                                 "trans": (np.array([0.0, 0.0, 0.45]) + rng.normal(0, 0.02, 3)).astype(np.float32),
                                 "shape": rng.normal(0, 1, 10).astype(np.float32)} for f in t["poses"]}
        os.makedirs(raw / "fhbhands_fits" / subject / action / seq)
        with open(raw / "fhbhands_fits" / subject / action / seq / "pkls.pkl", "wb") as fh:
            pickle.dump(fits, fh)
    return {"raw": raw, "truth": truth, "models": models, "data": tmp / "data"}


def test_fphab_recipe_end_to_end(fphab, tmp_path):
    raw, truth, models = fphab["raw"], fphab["truth"], fphab["models"]
    write_adaptor(tmp_path / "fhb_skel_centeridx9.pkl")
    work = tmp_path / "work"
    out, err = _run(["--config", "configs/photometric.py:recipe=fphab,control=false", "--workdir", str(work),
                     f"--config.data.data_dir={fphab['data']}", f"--config.data.manual_dir={raw}",
                     f"--config.mano.model_path={_mano(tmp_path)}",
                     f"--config.model.fphab_adaptor={tmp_path / 'fhb_skel_centeridx9.pkl'}", *TINY],
                    tmp_path)
    assert "fphab object meshes from" in err and "juice_bottle (8 vertices" in err
    _check_consistency_ran(out)
    rows = json.loads((work / "results.json").read_text())["eval"]
    assert set(rows) == {"mean labelled pose (trivial)", "supervised only", "continued with consistency"}

    # independent: the trivial row's object error from the raw files. Train frames (all labelled) give the mean
    # camera position of the objects' box centres; the test frames (put_salt) place salt's model by its pose.
    def placed(action_obj, pose_mm, points_m):
        return ((points_m * 1000.0) @ pose_mm[:3, :3].T + pose_mm[:3, 3]) @ R_EXTR.T / 1000.0 + T_EXTR / 1000.0

    def centre(v):
        return (v.min(0) + v.max(0)) / 2

    train_centres = []
    for (subject, action, seq), t in truth.items():
        obj = action.split("_", 1)[1]
        if subject in ("Subject_1", "Subject_3", "Subject_4") and obj in models:
            for pose in t["poses"].values():
                train_centres.append(placed(obj, pose, centre(models[obj][0])[None])[0])
    mean_t = np.mean(train_centres, axis=0)
    v = models["salt"][0]
    errors = []
    for pose in truth[("Subject_2", "put_salt", "1")]["poses"].values():
        gt = placed("salt", pose, v)
        errors.append(np.linalg.norm(v - centre(v) + mean_t - gt, axis=-1).mean())
    trivial = rows["mean labelled pose (trivial)"]
    assert trivial["num_objects"] == 2
    np.testing.assert_allclose(trivial["objverts3d_mepe_mm"], 1000 * np.mean(errors), rtol=1e-4)
    for row in rows.values():
        assert 0 < row["objverts3d_mepe_mm"] < 5000 and row["num_hands"] == 2


def test_ho3d_recipe_end_to_end(tmp_path):
    from hand_dataset_fixtures import write_ho3d

    raw = tmp_path / "raw"
    gt = write_ho3d(raw, "v2", train={"ABF10": 3, "MC1": 2}, evaluation={"SM1": 2}, eval_full_gt=True)
    models = write_ho3d_models(str(raw / "modelsprocess"))
    work = tmp_path / "work"
    out, err = _run(["--config", "configs/photometric.py:recipe=ho3d,control=false", "--workdir", str(work),
                     f"--config.data.data_dir={tmp_path / 'data'}", f"--config.data.manual_dir={raw}",
                     f"--config.mano.model_path={_mano(tmp_path)}", *TINY], tmp_path)
    assert "ho3d object meshes from" in err and "textured_simple_2000" not in err
    _check_consistency_ran(out)
    rows = json.loads((work / "results.json").read_text())["eval"]
    assert set(rows) == {"mean labelled pose (trivial)", "supervised only", "continued with consistency"}
    # independent: OpenGL meta -> OpenCV (negate y, z), model vertices placed by objRot / objTrans
    from scipy.spatial.transform import Rotation

    flip = np.diag([1.0, -1.0, -1.0])
    v = models["003_cracker_box"][0]
    c = (v.min(0) + v.max(0)) / 2

    def cam(meta, pts):
        rot = flip @ Rotation.from_rotvec(np.asarray(meta["objRot"]).reshape(3)).as_matrix()
        return pts @ rot.T + flip @ np.asarray(meta["objTrans"]).reshape(3)

    mean_t = np.mean([cam(m, c[None])[0] for m in gt["train"]["metas"].values()], axis=0)
    errors = [np.linalg.norm(v - c + mean_t - cam(m, v), axis=-1).mean() for m in gt["evaluation"]["metas"].values()]
    trivial = rows["mean labelled pose (trivial)"]
    assert trivial["num_objects"] == 2
    np.testing.assert_allclose(trivial["objverts3d_mepe_mm"], 1000 * np.mean(errors), rtol=1e-4)


# ----------------------------------------------------------------------------- jitter masks
def _quad(z, shift_x=0.0):
    """A 2-triangle square facing the camera at depth z, 0.1 m wide, moved by shift_x metres."""
    v = np.array([[-0.05, -0.05, z], [0.05, -0.05, z], [0.05, 0.05, z], [-0.05, 0.05, z]]) + [shift_x, 0, 0]
    return v, np.array([[0, 1, 2], [0, 2, 3]])


def test_padding_pixels_do_not_contribute():
    """Pixels on the crop's padding (the reference's, or where the query is sampled) never enter the loss: the
    masked loss does not change when the padding's values do, the unmasked one does."""
    import jax.numpy as jnp

    from handjax.losses import photometric as pl

    s = 16
    K = jnp.asarray([[[40.0, 0, 8], [0, 40.0, 8], [0, 0, 1]]], jnp.float32)
    ref_v, faces = _quad(0.4)
    q_v, _ = _quad(0.4, shift_x=0.03)  # the query's square is 3 px to the right: flow21 = +3 px in x
    rng = np.random.default_rng(0)
    img_q = rng.uniform(-0.5, 0.5, (1, s, s, 3)).astype(np.float32)
    img_r = rng.uniform(-0.5, 0.5, (1, s, s, 3)).astype(np.float32)
    jq = np.ones((1, s, s), bool)
    jq[:, :, 11:] = False  # the query's padding: columns 11..15
    jr = np.ones((1, s, s), bool)
    jr[:, :7] = False      # the reference's padding: rows 0..6

    def loss(fill, masks):
        q, r = img_q.copy(), img_r.copy()
        q[~jq], r[~jr] = fill, fill
        res = pl.photometric_consistency(jnp.asarray(q_v[None], jnp.float32), jnp.asarray(ref_v[None], jnp.float32),
                                         faces, np.zeros(2, bool), K, K, jnp.asarray(q), jnp.asarray(r),
                                         upstream_grid=False, jitter_query=jnp.asarray(jq) if masks else None,
                                         jitter_ref=jnp.asarray(jr) if masks else None)
        return float(res.loss[0]), np.asarray(res.valid[0]), np.asarray(res.flow21[0])

    masked0, valid, flow = loss(0.0, True)
    masked1, _, _ = loss(1000.0, True)
    plain0, plain_valid, _ = loss(0.0, False)
    plain1, _, _ = loss(1000.0, False)
    assert valid.sum() > 0 and plain_valid.sum() > valid.sum()
    assert masked0 == pytest.approx(masked1, abs=1e-6)   # padding values do not matter with the masks
    assert abs(plain1 - plain0) > 1.0                      # ... and would without them
    ys, xs = np.nonzero(valid)
    assert jr[0][ys, xs].all()                              # never on the reference's padding
    sample_x = xs + flow[ys, xs, 0]
    assert np.all(sample_x <= 10 + 1e-4)                    # the query is sampled inside its image only
    ys, xs = np.nonzero(plain_valid & jr[0])
    inside = xs + flow[ys, xs, 0] <= 10 - 1e-3              # samples whose bilinear neighbours are all inside
    assert valid[ys[inside], xs[inside]].all()


def test_crop_area_mask_matches_a_warped_white_image():
    """The jitter mask computed from crop_affine (used where the records carry none) equals the pipeline's
    nearest resampling of a white image (PIL) for rotated, shifted, scaled and mirrored crops."""
    import jax.numpy as jnp

    from data_pipelines.transforms import crop_camera, warp_labels
    from handjax.train.photometric import crop_area_mask

    K = np.array([[50.0, 0, 24], [0, 50.0, 15], [0, 0, 1]])
    for centre, side, rot, flip in (((24.0, 15.0), 48.0, 0.0, False), ((10.0, 20.0), 40.0, 0.4, False),
                                    ((30.0, 5.0), 25.0, -0.9, True)):
        _, _, affine = crop_camera(K, np.array(centre), side, 20, rot, flip)
        expected = warp_labels(np.ones((30, 48), bool), affine, (20, 20))
        got = np.asarray(crop_area_mask(jnp.asarray(affine[None], jnp.float32), (30, 48), (20, 20)))[0]
        assert 0 < expected.sum() < 400
        assert (got != expected).sum() <= 2  # float rounding at an exact pixel boundary at most


def test_pair_batches_carry_the_jitter_mask(fphab):
    """FPHAB pair batches through the data factory: both frames carry jitter_mask = the image area of the crop
    (whole 480x270 frame in a square crop, plus a random shift: padding above, below and beside it)."""
    import jax.numpy as jnp
    import ml_collections

    from data_pipelines import factory
    from handjax.train.photometric import crop_area_mask

    cfg = ml_collections.ConfigDict(dict(
        name="fphab", data_dir=str(fphab["data"]), manual_dir=str(fphab["raw"]), object_models="", image_size=24,
        num_workers=0, augment=dict(crop_from="image", bbox_pad=1.0, scale=0.0, rotation=0.0, shift=0.1,
                                    flip="none")))
    data = factory.make_data_factory(cfg, seed=0)
    batch = next(iter(data(split="train", mode="pair", batch_size=2, train=True, max_distance=None,
                           unannotated_only=False)))
    mask = np.asarray(batch["jitter_mask"])
    assert mask.shape == (2, 2, 24, 24) and mask.dtype == bool
    affine = np.asarray(batch["crop_affine"]).reshape(4, 3, 3)
    expected = np.asarray(crop_area_mask(jnp.asarray(affine), (270, 480), (24, 24))).reshape(2, 2, 24, 24)
    np.testing.assert_array_equal(mask, expected)
    assert 0.3 < mask.mean() < 0.7  # 270 of 480 rows, shifted
    assert batch["object_vertices"].shape[-2:] == (11, 3) and batch["object_vertex_valid"].shape[-1] == 11
    # a config without the data.object_models key (a system that places no known object) reads no object models
    plain = ml_collections.ConfigDict({k: v for k, v in cfg.items() if k != "object_models"})
    batch = next(iter(factory.make_data_factory(plain, seed=0)(split="train", mode="frame", batch_size=2,
                                                               train=True)))
    assert "jitter_mask" not in batch and "object_vertices" not in batch and batch["object_pose"].shape == (2, 4, 4)


def test_converted_release_evaluates_on_fphab(fphab, tmp_path):
    """The README's convert -> evaluate on FPHAB: a random PyTorch MeshRegNet saved in the release format (FPHAB
    adaptor included), converted through the CLI, evaluated with recipe=fphab (eval stage only) on the raw folder."""
    from handjax.convert.__main__ import main as convert_main
    from tests.torch_reference.meshregnet_torch import MeshRegNetRef, save_release

    import torch

    from handjax.mano.builtin import builtin_mano_arrays

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    ref = MeshRegNetRef(builtin_mano_arrays("right"), adaptor=rng.uniform(0, 2.0 / 778, (21, 778)).astype(np.float32),
                        fhb_shape=rng.normal(size=10)).eval()
    save_release(ref, tmp_path / "checkpoint_200.pth")
    assert convert_main(["handobjectconsist", "--checkpoint", str(tmp_path / "checkpoint_200.pth"), "--out",
                         str(tmp_path / "release")]) == 0
    work = tmp_path / "work"
    _run(["--config", "configs/photometric.py:recipe=fphab", "--workdir", str(work), "--config.stages=eval",
          f"--config.eval.checkpoint={tmp_path / 'release'}", f"--config.data.data_dir={fphab['data']}",
          f"--config.data.manual_dir={fphab['raw']}", f"--config.mano.model_path={_mano(tmp_path)}",
          "--config.data.image_size=32", "--config.sparse.fraction=1.0", "--config.eval.batch_size=2",
          "--config.supervised.batch_size=2"], tmp_path)
    rows = json.loads((work / "results.json").read_text())["eval"]
    release = rows[f"eval.checkpoint ({tmp_path / 'release'})"]
    assert release["num_objects"] == release["num_hands"] == 2
    assert np.isfinite(release["objverts3d_mepe_mm"]) and np.isfinite(release["joints3d_epe_mm"])


def test_reference_hand_from_stored_vertices_or_mano_fits():
    """FPHAB stores no vertices: the reference hand is MANO(fit pose with a flat mean, betas) + transl (no centring);
    stored vertices win where present; a frame with neither is reported as unavailable."""
    import jax.numpy as jnp

    from handjax import mano
    from handjax.train.photometric import Parts, reference_hand

    hand = mano.load_model(None, "right")
    parts = Parts(hand, None, jnp.zeros((1, 3, 3)), np.zeros((1, 3), np.int32), None, 0, (8, 8), {})
    rng = np.random.default_rng(0)
    pose = jnp.asarray(rng.normal(0, 0.3, (3, 48)), jnp.float32)
    betas = jnp.asarray(rng.normal(0, 1, (3, 10)), jnp.float32)
    transl = jnp.asarray([[0.01, 0.02, 0.5]] * 3, jnp.float32)
    stored = jnp.asarray(rng.normal(0, 0.1, (3, 778, 3)), jnp.float32)
    ref = {"mano_pose": pose, "betas": betas, "transl": transl, "vertices": stored, "annotated": jnp.ones(3, bool),
           "has_vertices": jnp.asarray([True, False, False]), "has_mano": jnp.asarray([True, True, False]),
           "has_transl": jnp.asarray([True, True, False])}
    verts, ok = reference_hand(parts, ref, 3)
    posed = mano.mano_forward(hand, mano.from_axis_angle(hand, pose, flat_hand_mean=True), betas).vertices
    np.testing.assert_allclose(np.asarray(verts[0]), np.asarray(stored[0]))
    np.testing.assert_allclose(np.asarray(verts[1]), np.asarray(posed[1] + transl[1]), atol=1e-6)
    assert np.asarray(ok).tolist() == [True, True, False]
