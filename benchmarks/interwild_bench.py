"""InterWild train step (both branches: body ResNet + BoxNet, affine hand crops, hand ResNet + PositionNet +
RotationNet, TransNet heatmaps + ResNet-18) in handjax vs the PyTorch reference (tests/torch_reference/
interwild_torch.py), same process, alternating rounds; ratio = torch ms / handjax ms (>= 1.0x: handjax faster).

Step: forward in train mode (BN batch statistics), an L1 objective on every raw output the losses use (box
centres and sizes, 2.5D joints, root / finger axis-angles, betas, root cameras, relative translation) against
fixed random targets (MANO is left out: both sides would run the same skinning), backward, Adam (lr 1e-4).
JAX: one jitted step with donated state; torch: zero_grad / backward / step, default thread count.

    .venv/bin/python benchmarks/interwild_bench.py                       # default config sizes, batch 8
    .venv/bin/python benchmarks/interwild_bench.py --size 512 --hand 256 --hm 64 --depth 50 --batch 4  # upstream
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

KEYS = ("rhand_center", "rhand_size", "lhand_center", "lhand_size", "joint_img", "root_pose", "hand_pose", "shape",
        "root_trans", "rel_trans")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=128, help="person crop height (width 3/4)")
    p.add_argument("--hand", type=int, default=64, help="hand crop side")
    p.add_argument("--hm", type=int, default=16, help="TransNet heatmap side / depth")
    p.add_argument("--depth", type=int, default=18, choices=(18, 50), help="body / hand ResNet depth")
    p.add_argument("--channels", type=int, default=64, help="deconvolution and RotationNet widths")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="steps per round")
    p.add_argument("--malloc", default="keep", choices=["keep", "default"],
                   help="glibc malloc: keep freed memory (handjax.host_memory, as handjax.main does) or glibc's "
                        "default; set before either framework allocates, so it applies to both")
    a = p.parse_args(argv)

    from handjax import host_memory  # does not import jax

    os.environ["HANDJAX_MALLOC"] = a.malloc
    malloc_kept = host_memory.keep_freed_memory()  # before jax and torch allocate

    import jax
    import jax.numpy as jnp
    import optax
    import torch
    from flax import nnx

    from handjax.models import interwild as iw
    from torch_reference.interwild_torch import InterWildTorch

    h, w = a.size, 3 * a.size // 4
    g = iw.Geometry(image_hw=(h, w), hand_size=a.hand, trans_hm=a.hm, sigma=2.5 * a.hm / 64)
    rng = np.random.default_rng(0)
    img = rng.uniform(size=(a.batch, h, w, 3)).astype(np.float32)

    t0 = time.perf_counter()
    model = iw.InterWildModel(g, body_backbone=f"resnet{a.depth}", hand_backbone=f"resnet{a.depth}",
                              deconv_channels=a.channels, rot_channels=a.channels, rngs=nnx.Rngs(0))
    model.train()
    out0 = model(jnp.asarray(img))
    targets = {k: jnp.asarray(rng.normal(size=out0[k].shape).astype(np.float32)) for k in KEYS}
    tx = optax.adam(1e-4)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    opt_state = tx.init(params)

    @jax.jit
    def jstep(params, rest, opt_state, x):
        def loss_fn(p):
            m = nnx.merge(graphdef, p, jax.tree.map(lambda v: v, rest), copy=True)
            out = m(x)
            loss = sum(jnp.mean(jnp.abs(out[k] - targets[k])) for k in KEYS)
            return loss, nnx.state(m, nnx.Not(nnx.Param))

        (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), rest, opt_state, loss

    x = jnp.asarray(img)
    params, rest, opt_state, loss = jstep(params, rest, opt_state, x)
    jax.block_until_ready(loss)
    jax_setup = time.perf_counter() - t0

    t0 = time.perf_counter()
    net = InterWildTorch(image_hw=(h, w), body_depth=a.depth, hand_depth=a.depth, hand_size=a.hand, trans_hm=a.hm,
                         sigma=2.5 * a.hm / 64, deconv_channels=a.channels, rot_channels=a.channels).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    timg = torch.tensor(img).permute(0, 3, 1, 2).contiguous()
    ttargets = {k: torch.tensor(np.asarray(v)) for k, v in targets.items()}

    def tstep():
        opt.zero_grad()
        out = net(timg)
        loss = sum((out[k] - ttargets[k]).abs().mean() for k in KEYS)
        loss.backward()
        opt.step()
        return loss

    tstep()
    torch_setup = time.perf_counter() - t0

    jt, tt = [], []
    for _ in range(a.rounds):
        s = time.perf_counter()
        for _ in range(a.steps):
            params, rest, opt_state, loss = jstep(params, rest, opt_state, x)
        jax.block_until_ready(loss)
        jt.append((time.perf_counter() - s) / a.steps * 1e3)
        s = time.perf_counter()
        for _ in range(a.steps):
            tstep()
        tt.append((time.perf_counter() - s) / a.steps * 1e3)
    jm, tm = statistics.median(jt), statistics.median(tt)
    print(f"InterWild train step, batch {a.batch}, {h}x{w} crops, ResNet-{a.depth}, hand {a.hand}, heatmaps {a.hm}^3, "
          f"malloc={a.malloc} (freed memory kept: {malloc_kept})")
    print(f"  handjax  {jm:9.1f} ms/step  (best {min(jt):.1f}; setup incl. compile {jax_setup:.1f} s)")
    print(f"  torch    {tm:9.1f} ms/step  (best {min(tt):.1f}; setup {torch_setup:.1f} s, {torch.get_num_threads()} "
          f"threads)")
    print(f"  ratio torch/handjax: {tm / jm:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
