"""handobjectconsist step timings (CPU): the consistency train step split into network / rendering + flow / warp,
and the supervised train step against the PyTorch reference MeshRegNet in the same process.

1. Consistency step (``handjax.train.photometric.consistency_loss`` value + gradients, one jit): a batch of
   ``--pairs`` [query, reference] pairs of ``--height`` x ``--width`` frames (upstream: 8 pairs of 480 x 270, a
   480 x 480 canvas), built-in hand (779 sealed vertices) + a 1000-vertex object. Its parts, each jitted alone on
   the same inputs: network = MeshRegNet forward + decode + backward on the 2 x pairs images with the supervised
   terms; rendering + flow = the two rasterisations (face ids) + the two interpolated flows; warp = the occlusion
   round trip, the bilinear warp and the masked L1 (with its gradient w.r.t. the flow). Goal: rendering + warp
   <= 20 % of the step on CPU.
2. Supervised step: handjax (jit, Adam) vs tests/torch_reference/meshregnet_torch.py (Adam, BatchNorm frozen as
   upstream's --freeze_batchnorm, eval mode) on ``--batch`` frames; median wall ms/step, ratio torch / handjax
   printed (goal >= 1.0x).

    .venv/bin/python benchmarks/photometric_bench.py                      # upstream sizes (slow on 2 cores)
    .venv/bin/python benchmarks/photometric_bench.py --pairs 2 --batch 4 --height 135 --width 240 --steps 2
"""
from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _time(fn, steps: int, warmup: int = 1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def _block(x):
    import jax

    return jax.tree.map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, x)


def make_inputs(args):
    """A pair batch in the pipeline's layout: (B, 2, ...) with labels, the query unannotated."""
    import numpy as np

    rng = np.random.default_rng(0)
    b, h, w = args.pairs, args.height, args.width
    f = 348.9 * w / 480.0
    K = np.array([[f, 0, w / 2.0 - 6], [0, f, h / 2.0], [0, 0, 1]], np.float32)
    batch = {"image": rng.normal(0, 1, (b, 2, h, w, 3)).astype(np.float32),
             "K": np.broadcast_to(K, (b, 2, 3, 3)).copy(),
             "object_id": np.zeros((b, 2), np.int32),
             "annotated": np.stack([np.zeros(b, bool), np.ones(b, bool)], 1),
             "joints3d": rng.normal(0, 0.05, (b, 2, 21, 3)).astype(np.float32) + np.array([0, 0, 0.5], np.float32)}
    return batch


def build(args):
    import jax.numpy as jnp
    import numpy as np

    from handjax import mano
    from handjax.configs.photometric import get_config
    from handjax.models.meshregnet import UPSTREAM_PLACEMENT
    from handjax.render import MANO_WRIST_BOUNDARY_IDS, seal_wrist
    from handjax.train import photometric as P

    cfg = get_config("recipe=fphab")
    cfg.model.fhb_adaptor = False
    hand = mano.load_model(None, "right")
    _, sealed = seal_wrist(hand.v_template, np.asarray(hand.faces), MANO_WRIST_BOUNDARY_IDS)
    # a 1000-vertex object: a UV sphere of radius 4 cm
    n_lat, n_lon = 25, 40
    th, ph = np.meshgrid(np.linspace(0.1, np.pi - 0.1, n_lat), np.linspace(0, 2 * np.pi, n_lon, endpoint=False),
                         indexing="ij")
    verts = 0.04 * np.stack([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)], -1).reshape(-1, 3)
    faces = []
    for i in range(n_lat - 1):
        for j in range(n_lon):
            a, bb = i * n_lon + j, i * n_lon + (j + 1) % n_lon
            c, d = a + n_lon, bb + n_lon
            faces += [(a, bb, d), (a, d, c)]
    parts = P.Parts(hand_model=hand, convention=P.model_convention("manopth"),
                    object_vertices=jnp.asarray(verts[None], jnp.float32), object_faces=np.asarray(faces, np.int32),
                    hand_faces=np.asarray(sealed), wrist_fan=len(MANO_WRIST_BOUNDARY_IDS),
                    image_hw=(args.height, args.width), factors=dict(UPSTREAM_PLACEMENT))
    return cfg, parts, P.build_model(cfg)


def consistency_bench(args):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from handjax.losses import photometric as pl
    from handjax.train import photometric as P

    cfg, parts, model = build(args)
    batch = {k: jnp.asarray(v) for k, v in make_inputs(args).items()}
    weights = dict(recov_joints3d=0.5, mano_shape=5e-7, pose_reg=5e-6, consist=1e-3)
    consist = dict(lambda_data=0.999, ramp_steps=0, gt_refs=False, skip_annotated_queries=True, pixel_center=0.5,
                   upstream_grid=True, occlusion_threshold=0.03)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def step(params, rest, batch):
        def loss(p):
            m = nnx.merge(graphdef, p, rest, copy=True)
            return P.consistency_loss(m, batch, None, parts=parts, weights=weights, freeze_bn=True,
                                      consist=consist)[0]
        return jax.value_and_grad(loss)(params)

    @jax.jit
    def network(params, rest, batch):
        flat = {k: v.reshape((-1,) + v.shape[2:]) for k, v in batch.items()}

        def loss(p):
            m = nnx.merge(graphdef, p, rest, copy=True)
            out = P.forward(m, parts, flat["image"], flat["K"], flat["object_id"], True)
            return pl.weighted_terms(out, flat, {"recov_joints3d": 0.5, "mano_shape": 5e-7, "pose_reg": 5e-6})[0]
        return jax.value_and_grad(loss)(params)

    # meshes of the predicted queries and (here also predicted) references, as the step builds them
    m = nnx.merge(graphdef, params, rest)
    m.eval()
    flat = {k: v.reshape((-1,) + v.shape[2:]) for k, v in batch.items()}
    out = jax.jit(lambda x, k, o: P.forward(m, parts, x, k, o))(flat["image"], flat["K"], flat["object_id"])
    verts, faces, ignore = pl.hand_object_mesh(out.hand.vertices, out.object.vertices, parts.hand_faces,
                                               parts.object_faces, parts.wrist_fan)
    b = args.pairs
    qv, rv = verts.reshape(b, 2, -1, 3)[:, 0], verts.reshape(b, 2, -1, 3)[:, 1]
    K = batch["K"][:, 0]
    size = max(args.height, args.width)

    @jax.jit
    def render(qv, rv, K):
        from handjax.render import visible_faces_batch

        k = pl.canvas_intrinsics(K, 0.5)
        fid_q = visible_faces_batch(qv, faces, k, (size, size), near=pl.UPSTREAM_NEAR)
        fid_r = visible_faces_batch(rv, faces, k, (size, size), near=pl.UPSTREAM_NEAR)
        return (pl.vertex_flow(rv, qv, faces, k, k, fid_r), pl.vertex_flow(qv, rv, faces, k, k, fid_q),
                fid_q, fid_r)

    flow21, flow12, fid_q, fid_r = _block(render(qv, rv, K))
    images = batch["image"]

    @jax.jit
    def warp(flow21, flow12, fid_q, fid_r, iq, ir):
        def loss(f21):
            keep_r = fid_r >= 0
            occ = pl.roundtrip_mask(jax.lax.stop_gradient(f21), flow12, keep_r, fid_q >= 0)
            f = (f21 * (keep_r & occ)[..., None])[:, :args.height, :args.width]
            inb = pl.warp_valid_mask(f, False)
            warped = pl.warp(iq, f, False, "zeros") * inb[..., None]
            valid = inb & (jax.lax.stop_gradient(f[..., 0]) != 0)
            d = jnp.abs(warped - ir) * valid[..., None]
            return jnp.mean(jnp.sum(d, (1, 2, 3)) / jnp.maximum(3 * jnp.sum(valid, (1, 2)), 1))
        return jax.value_and_grad(loss)(flow21)

    ms_step = _time(lambda: _block(step(params, rest, batch)), args.steps)
    ms_net = _time(lambda: _block(network(params, rest, batch)), args.steps)
    ms_render = _time(lambda: _block(render(qv, rv, K)), args.steps)
    ms_warp = _time(lambda: _block(warp(flow21, flow12, fid_q, fid_r, images[:, 0], images[:, 1])), args.steps)
    share = (ms_render + ms_warp) / ms_step
    print(f"consistency step, {b} pairs of {args.height}x{args.width} (canvas {size}^2), "
          f"{verts.shape[1]} vertices / {len(faces)} faces per mesh:")
    print(f"  whole step   {ms_step:9.1f} ms")
    print(f"  network      {ms_net:9.1f} ms  ({ms_net / ms_step:5.1%})")
    print(f"  render+flow  {ms_render:9.1f} ms  ({ms_render / ms_step:5.1%})")
    print(f"  warp+loss    {ms_warp:9.1f} ms  ({ms_warp / ms_step:5.1%})")
    print(f"  rendering + warping share {share:.1%} (goal <= 20%)")
    from handjax.render import visibility_strategy

    k = pl.canvas_intrinsics(K, 0.5)
    print(f"  visibility pass: queries {visibility_strategy(qv, faces, k, (size, size), near=pl.UPSTREAM_NEAR)}, "
          f"references {visibility_strategy(rv, faces, k, (size, size), near=pl.UPSTREAM_NEAR)}")


def supervised_bench(args):
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    import torch
    from flax import nnx

    from handjax.mano.builtin import builtin_mano_arrays
    from handjax.train import photometric as P
    from tests.torch_reference.meshregnet_torch import MeshRegNetRef

    cfg, parts, model = build(args)
    rng = np.random.default_rng(1)
    n, h, w = args.batch, args.height, args.width
    x = rng.normal(0, 1, (n, h, w, 3)).astype(np.float32)
    K = np.broadcast_to(np.array([[348.9 * w / 480, 0, w / 2], [0, 348.9 * w / 480, h / 2], [0, 0, 1]],
                                 np.float32), (n, 3, 3)).copy()
    target = rng.normal(0, 0.05, (n, 21, 3)).astype(np.float32) + np.array([0, 0, 0.5], np.float32)
    canon = np.asarray(parts.object_vertices)[np.zeros(n, int)]
    tx = optax.adam(5e-5)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    opt_state = tx.init(params)
    batch = {"image": jnp.asarray(x), "K": jnp.asarray(K), "object_id": jnp.zeros(n, jnp.int32),
             "joints3d": jnp.asarray(target), "object_vertices": jnp.asarray(canon + np.array([0, 0, 0.5]))}
    weights = dict(recov_joints3d=0.5, recov_objverts3d=0.5, mano_shape=5e-7, pose_reg=5e-6)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def jstep(params, opt_state, batch):
        def loss(p):
            m = nnx.merge(graphdef, p, rest, copy=True)
            return P.supervised_loss(m, batch, None, parts=parts, weights=weights, freeze_bn=True)[0]
        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    state = [params, opt_state]

    def run_jax():
        state[0], state[1], v = jstep(state[0], state[1], batch)
        v.block_until_ready()

    ref = MeshRegNetRef(builtin_mano_arrays("right")).eval()  # eval: frozen BatchNorm, as --freeze_batchnorm
    topt = torch.optim.Adam([p for p in ref.parameters() if p.requires_grad], lr=5e-5)
    tx_img = torch.as_tensor(x).permute(0, 3, 1, 2).contiguous()
    tK, tt, tc = torch.as_tensor(K), torch.as_tensor(target), torch.as_tensor(canon)
    tobj = tc + torch.tensor([0, 0, 0.5])

    def run_torch():
        topt.zero_grad()
        out = ref(tx_img, tK, tc)
        loss = 0.5 * ((out["joints"] - tt) ** 2).mean() + 0.5 * ((out["obj_verts"] - tobj) ** 2).mean() \
            + 5e-7 * (out["shape"] ** 2).mean() + 5e-6 * (out["pose"][:, 3:] ** 2).mean()
        loss.backward()
        topt.step()

    jax_ms, torch_ms = [], []
    run_jax()
    run_torch()
    for _ in range(args.rounds):  # alternate so that outside load hits both alike
        jax_ms.append(_time(run_jax, args.steps, warmup=0))
        torch_ms.append(_time(run_torch, args.steps, warmup=0))
    j, t = statistics.median(jax_ms), statistics.median(torch_ms)
    print(f"supervised step, batch {n} of {h}x{w}: handjax {j:.1f} ms, torch ({torch.get_num_threads()} threads) "
          f"{t:.1f} ms, torch/handjax {t / j:.2f}x (goal >= 1.0x)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=8, help="consistency pairs per step (upstream 8)")
    p.add_argument("--batch", type=int, default=8, help="supervised frames per step (upstream 8)")
    p.add_argument("--height", type=int, default=270)
    p.add_argument("--width", type=int, default=480)
    p.add_argument("--steps", type=int, default=3, help="timed steps per measurement (median)")
    p.add_argument("--rounds", type=int, default=2, help="alternating jax / torch rounds (supervised)")
    p.add_argument("--only", choices=("consistency", "supervised"), default=None)
    args = p.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from handjax import host_memory  # as handjax.main: keep freed host memory (before jax and torch allocate)

    host_memory.keep_freed_memory()
    if args.only in (None, "consistency"):
        consistency_bench(args)
    if args.only in (None, "supervised"):
        supervised_bench(args)


if __name__ == "__main__":
    main()
