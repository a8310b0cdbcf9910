"""IdHandMesh personalisation speed: handjax (JAX/XLA-CPU) vs the PyTorch reference, same process, CPU.

1. Inference-time optimisation: N images fitted with betas fixed, translation (Adam lr1 x steps1) then
   translation + 6D pose (Adam lr2 x steps2), 2D reprojection MSE in pixels. handjax: ``personalization.fit``,
   each image its own problem (vmap), one jitted program. PyTorch: upstream's way, ONE batched problem (MSE mean
   over all images, Adam over the batch's tensors; two parameter groups in stage 2) through the reference's
   6D -> axis-angle -> manopth path (tests/torch_reference/idhandmesh_torch.py). Reported: images/s of the whole
   fit (compilation excluded: the jitted fit runs once before timing).
2. Baseline train step: the anonymous model (ResNet backbone + fc feature + 3-stage 6D regressor + shape MLP,
   MANO mesh) with vertex L1 + 0.1 normal + edge + pose6d L1 + betas L1, Adam 1e-4; handjax's jitted step vs the
   reference's zero_grad/backward/step, alternating rounds. Reported: ms/step and the ratio.

    .venv/bin/python benchmarks/personalize_bench.py                      # N=256 fit, ResNet-18 32^2 batch 32
    .venv/bin/python benchmarks/personalize_bench.py --images 1024 --depth 50 --size 224 --batch 8

The machine's other load hits both runners alike only roughly: look at the printed load average.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=256, help="images fitted at once")
    p.add_argument("--steps1", type=int, default=200)
    p.add_argument("--steps2", type=int, default=100)
    p.add_argument("--fit-rounds", type=int, default=3)
    p.add_argument("--depth", type=int, default=18, choices=[18, 34, 50])
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=3, help="train steps per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--skip-fit", action="store_true")
    p.add_argument("--skip-train", action="store_true")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- problem
def make_problem(n: int, seed: int = 0):
    """N synthetic right hands (built-in MANO): true 6D pose / translation, betas, K, exact 2D joints, and a
    perturbed starting pose (the network's prediction stands in)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from handjax import mano
    from handjax.geometry import axis_angle_to_matrix, project_matrix
    from handjax.models import idhandmesh as idm

    hand = mano.load_model(None, "right")
    rng = np.random.default_rng(seed)
    rot = axis_angle_to_matrix(jnp.asarray(rng.normal(0, 0.3, (n, 16, 3)), jnp.float32))
    pose = idm.matrix_to_rows6d(rot).reshape(n, 96)
    betas = jnp.asarray(rng.normal(0, 1, (n, 10)), jnp.float32)
    transl = jnp.asarray(np.array([0.0, 0.0, 0.7]) + rng.normal(0, 0.05, (n, 3)), jnp.float32)
    K = jnp.tile(jnp.asarray([[600.0, 0, 320], [0, 600.0, 240], [0, 0, 1]]), (n, 1, 1))
    _, out = jax.jit(idm.mano_mesh, static_argnums=(3,))(hand, pose, betas, False)
    target = project_matrix(out.joints + transl[:, None], jnp.concatenate([K, jnp.zeros((n, 3, 1))], -1))
    start = pose + jnp.asarray(rng.normal(0, 0.05, pose.shape), jnp.float32)
    t0 = jax.jit(idm.init_translation, static_argnums=(5,))(hand, start, betas, target[:, 0], K, 0.85)
    return hand, {k: np.asarray(v) for k, v in dict(pose=start, transl=t0, betas=betas, K=K, target=target).items()}


def jax_fit_runner(hand, p, args):
    import jax
    import jax.numpy as jnp

    from handjax.models import personalization as pers

    arrays = {k: jnp.asarray(v) for k, v in p.items()}

    def run():
        out = pers.fit(hand, arrays["pose"], arrays["transl"], arrays["betas"], arrays["K"], arrays["target"],
                       steps1=args.steps1, steps2=args.steps2)
        jax.block_until_ready(out)
        return float(jnp.mean(out[2][:, -1]))

    return run


def torch_fit_runner(p, args):
    import numpy as np
    import torch

    from handjax.mano.builtin import builtin_mano_arrays
    from tests.torch_reference.idhandmesh_torch import ManoLayerRef, matrix_to_axis_angle, rotation_6d_to_matrix

    layer = ManoLayerRef(builtin_mano_arrays("right"))
    t = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in p.items()}
    n = t["pose"].shape[0]

    def energy(pose6d, transl):
        aa = matrix_to_axis_angle(rotation_6d_to_matrix(pose6d.reshape(n, 16, 6))).reshape(n, 48)
        _, joints = layer(aa, t["betas"])
        cam = joints / 1000.0 + transl[:, None]
        uv = torch.einsum("nij,nkj->nki", t["K"], cam)
        uv = uv[..., :2] / (uv[..., 2:] + 1e-8)
        return torch.nn.functional.mse_loss(uv, t["target"])

    def run():
        pose = t["pose"].clone()
        transl = t["transl"].clone().requires_grad_(True)
        opt = torch.optim.Adam([transl], lr=1e-2)
        for _ in range(args.steps1):
            opt.zero_grad()
            loss = energy(pose, transl)
            loss.backward()
            opt.step()
        pose.requires_grad_(True)
        opt = torch.optim.Adam([{"params": [transl], "lr": 1e-3}, {"params": [pose], "lr": 1e-3}])
        for _ in range(args.steps2):
            opt.zero_grad()
            loss = energy(pose, transl)
            loss.backward()
            opt.step()
        return float(loss.detach())

    return run


# ----------------------------------------------------------------------------- train step
def torch_losses(ref, out, batch, faces):
    import torch

    def edges(v):
        a, b, c = v[:, faces[:, 0]], v[:, faces[:, 1]], v[:, faces[:, 2]]
        return b - a, c - a, c - b

    pose6d, betas = out["pose6d"][0], out["betas"]
    verts, _ = ref.mesh(pose6d, betas)
    gt = batch["verts"]
    l_v = (verts - gt).abs().mean()
    pe, ge = edges(verts), edges(gt)
    n = torch.nn.functional.normalize(torch.cross(ge[0], ge[1], dim=-1), dim=-1)
    l_n = torch.cat([(torch.nn.functional.normalize(e, dim=-1) * n).sum(-1, keepdim=True).abs() for e in pe], 1).mean()
    l_e = torch.cat([(a.norm(dim=-1, keepdim=True) - b.norm(dim=-1, keepdim=True)).abs() for a, b in zip(pe, ge)],
                    1).mean()
    return l_v + 0.1 * l_n + l_e + (pose6d - batch["pose6d"]).abs().mean() + (betas - batch["betas"]).abs().mean()


def train_runners(args):
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    import torch
    from flax import nnx

    from handjax import mano
    from handjax.losses import idhandmesh as L
    from handjax.mano.builtin import builtin_mano_arrays
    from handjax.models import idhandmesh as idm
    from tests.torch_reference.idhandmesh_torch import IdHandMeshRef

    hand = mano.load_model(None, "right")
    rng = np.random.default_rng(0)
    b, s = args.batch, args.size
    images = rng.normal(0, 1, (b, s, s, 3)).astype(np.float32)
    aa = rng.normal(0, 0.3, (b, 48)).astype(np.float32)
    betas = rng.normal(0, 1, (b, 10)).astype(np.float32)
    transl = np.tile(np.float32([0, 0, 0.7]), (b, 1))
    six = L.gt_pose6d({"mano_pose": jnp.asarray(aa)})
    _, gt = jax.jit(idm.mano_mesh)(hand, six, jnp.asarray(betas))
    batch = {"image": jnp.asarray(images), "mano_pose": jnp.asarray(aa), "betas": jnp.asarray(betas),
             "transl": jnp.asarray(transl), "vertices": gt.vertices + transl[:, None]}
    weights = dict(vertices=1.0, normal=0.1, edge=1.0, pose6d=1.0, betas=1.0)
    ctx = {"faces": jnp.asarray(hand.faces)}

    model = idm.IdHandMeshModel(backbone=f"resnet{args.depth}", rngs=nnx.Rngs(0), feature_dim=1000)
    model.train()
    tx = optax.adam(1e-4)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    state = (params, rest, tx.init(params))

    def loss_fn(p, r, batch):
        m = nnx.merge(graphdef, p, r, copy=True)
        out = m(batch["image"])
        _, mesh = idm.mano_mesh(hand, out["pose6d"][0], out["betas"])
        loss, _ = L.loss_from_weights(dict(out, vertices=mesh.vertices), batch, weights, ctx)
        return loss, nnx.state(m, nnx.Not(nnx.Param))

    @jax.jit
    def step(state, batch):
        p, r, o = state
        (loss, r), g = jax.value_and_grad(loss_fn, has_aux=True)(p, r, batch)
        upd, o = tx.update(g, o, p)
        return (optax.apply_updates(p, upd), r, o), loss

    holder = {"state": state}

    def run_jax(k):
        for _ in range(k):
            holder["state"], loss = step(holder["state"], batch)
        jax.block_until_ready(loss)

    ref = IdHandMeshRef("baseline", builtin_mano_arrays("right"), depth=args.depth).train()
    opt = torch.optim.Adam(ref.parameters(), lr=1e-4)
    tb = {"verts": torch.from_numpy(np.asarray(gt.vertices) / idm.UNIT), "pose6d": torch.from_numpy(np.asarray(six)),
          "betas": torch.from_numpy(betas)}
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    faces = torch.from_numpy(np.asarray(hand.faces, np.int64))

    def run_torch(k):
        for _ in range(k):
            opt.zero_grad()
            loss = torch_losses(ref, ref(x), tb, faces)
            loss.backward()
            opt.step()

    return {"handjax": run_jax, "torch": run_torch}


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from handjax import host_memory

    host_memory.keep_freed_memory()
    import jax
    import torch

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    print(f"jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"cores={len(os.sched_getaffinity(0))}, load avg={os.getloadavg()[0]:.1f}")
    if not args.skip_fit:
        hand, problem = make_problem(args.images)
        runners = {"handjax (vmap, per-image problems)": jax_fit_runner(hand, problem, args),
                   "torch (one batched problem)": torch_fit_runner(problem, args)}
        t0 = time.perf_counter()
        runners["handjax (vmap, per-image problems)"]()  # compile
        print(f"fit: {args.images} images x ({args.steps1} + {args.steps2}) iterations; handjax compile + first run "
              f"{time.perf_counter() - t0:.1f} s")
        times = {k: [] for k in runners}
        finals = {}
        for _ in range(args.fit_rounds):
            for name, run in runners.items():
                t0 = time.perf_counter()
                finals[name] = run()
                times[name].append(time.perf_counter() - t0)
        for name, ts in times.items():
            med = sorted(ts)[len(ts) // 2]
            print(f"  {name:38s} {med:8.3f} s/fit  {args.images / med:9.1f} images/s  final energy "
                  f"{finals[name]:.3g} px^2")
        a, b = (sorted(v)[len(v) // 2] for v in times.values())
        print(f"  ratio handjax / torch: {b / a:.2f}x images/s")
    if not args.skip_train:
        runners = train_runners(args)
        for run in runners.values():
            run(1)  # compile / warm up
        times = {k: [] for k in runners}
        for _ in range(args.rounds):
            for name, run in runners.items():
                t0 = time.perf_counter()
                run(args.steps)
                times[name].append((time.perf_counter() - t0) / args.steps)
        print(f"baseline train step: ResNet-{args.depth}, batch {args.batch}, {args.size}^2")
        med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
        for name, m in med.items():
            print(f"  {name:10s} {1000 * m:9.1f} ms/step  {args.batch / m:8.1f} images/s")
        print(f"  ratio handjax / torch: {med['torch'] / med['handjax']:.2f}x")


if __name__ == "__main__":
    main()
