"""DIGIT train step on CPU: handjax (JAX/XLA) vs the PyTorch reference, same process.

Step = the whole DIGIT network in train mode (batch-statistics BN) on a fixed batch, DIGIT's
five loss terms with their weights (2.5D joints L1, root depth L1, handedness BCE, pixel
cross-entropy x10, bone L2 x0.1) on fixed targets, backward, and an Adam update (lr 1e-4).
JAX: one jitted step (``handjax.train.digit.loss_fn`` on the batch, ``optax.adam``), state
donated; PyTorch: tests/torch_reference/digit_torch.py with the same reductions written in
torch, ``zero_grad`` / ``backward`` / ``Adam.step``. Runners alternate in rounds (warm-up and
compilation excluded); the ratio is printed against every torch setting and the fastest.

    .venv/bin/python benchmarks/digit_bench.py                              # HRNet-W32 + DIGIT head, 4 x 256^2
    .venv/bin/python benchmarks/digit_bench.py --small --size 64 --batch 8  # configs/digit.py's CPU model
    .venv/bin/python benchmarks/digit_bench.py --small --size 64 --batch 2 --rounds 1 --warmup 0  # smoke run

Defaults as handjax trains (``conv_impl="auto"``: Winograd 3x3 / stride-1 convolutions on CPU;
freed host memory kept, ``--malloc default`` turns it off, for both frameworks).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="configs/digit.py's default CPU model instead of the paper's")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--size", type=int, default=256, help="square crop side (a multiple of 32)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--conv-impl", nargs="+", default=["auto"], choices=["auto", "winograd", "xla"])
    p.add_argument("--torch-threads", type=int, nargs="+", default=[0])
    p.add_argument("--torch-memory-format", nargs="+", default=["contiguous", "channels_last"],
                   choices=["contiguous", "channels_last"], help="torch runners' memory formats (each is timed)")
    p.add_argument("--malloc", default="keep", choices=["keep", "default"])
    p.add_argument("--skip-torch", action="store_true")
    args = p.parse_args(argv)
    if args.size % 32:
        p.error(f"--size must be a multiple of 32, got {args.size}")
    return args


def model_sizes(small: bool) -> dict:
    from handjax.configs.digit import PAPER_SPEC, SMALL_SPEC, get_config

    if not small:
        return dict(backbone="hrnet_w32", backbone_kw={}, spec=dict(PAPER_SPEC), hrnet=dict(width=32))
    cfg = get_config()
    kw = dict(cfg.model.backbone_kw)
    from handjax.models.hrnet import HRNET_SPECS
    base = HRNET_SPECS[cfg.model.backbone]
    hrnet = dict(width=kw.get("width", base.width), layer1_planes=kw.get("layer1_planes", base.layer1_planes),
                 layer1_blocks=kw.get("layer1_blocks", base.layer1_blocks), stages=kw.get("stages", base.stages))
    return dict(backbone=cfg.model.backbone, backbone_kw=kw, spec=dict(SMALL_SPEC), hrnet=hrnet)


def make_batch(batch: int, size: int, seed: int = 0) -> dict:
    """A fixed two-hand batch in the pipelines' format (ImageNet-normalised images)."""
    import numpy as np

    from handjax.models.digit import IMAGENET_MEAN, IMAGENET_STD

    rng = np.random.default_rng(seed)
    unit = rng.uniform(size=(batch, size, size, 3)).astype(np.float32)
    j3d = (rng.normal(size=(batch, 42, 3)) * 0.03 + [0, 0, 0.6]).astype(np.float32)
    return dict(image=((unit - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)).astype(np.float32),
                unit=unit, joints2d=rng.uniform(0, size, (batch, 42, 2)).astype(np.float32), joints3d=j3d,
                joint_valid=rng.uniform(size=(batch, 42)) > 0.1, hand_type=rng.integers(0, 3, batch),
                part_seg=rng.integers(0, 33, (batch, size, size)).astype(np.int32))


class JaxRunner:
    def __init__(self, sizes, batch, conv_impl):
        import jax
        import optax
        from flax import nnx

        from handjax.losses.digit import DEFAULT_WEIGHTS
        from handjax.models.digit import DigitModel, DigitSpec
        from handjax.train.digit import loss_fn

        self._jax = jax
        t0 = time.perf_counter()
        model = DigitModel(rngs=nnx.Rngs(0), backbone=sizes["backbone"], backbone_kw=sizes["backbone_kw"],
                           spec=DigitSpec(**sizes["spec"]), conv_impl=conv_impl)
        model.train()
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        tx = optax.adam(1e-4)
        size = batch["image"].shape[1]
        data = {k: v for k, v in batch.items() if k != "unit"}

        def step(state, data):
            params, rest, opt = state

            def f(p):
                m = nnx.merge(graphdef, p, jax.tree.map(lambda x: x, rest), copy=True)
                loss, _ = loss_fn(m, data, None, weights=DEFAULT_WEIGHTS, image_size=size)
                return loss, nnx.state(m, nnx.Not(nnx.Param))

            (loss, new_rest), grads = jax.value_and_grad(f, has_aux=True)(params)
            updates, opt = tx.update(grads, opt, params)
            return (optax.apply_updates(params, updates), new_rest, opt), loss

        self.step = jax.jit(step, donate_argnums=0)
        self.state = (params, rest, tx.init(params))
        self.data = data
        self.first_loss = self.run(1)
        self.setup_s = time.perf_counter() - t0

    def run(self, n):
        loss = None
        for _ in range(n):
            self.state, loss = self.step(self.state, self.data)
        self._jax.block_until_ready(loss)
        return float(loss)


class TorchRunner:
    def __init__(self, sizes, batch, threads, memory_format="contiguous"):
        import jax.numpy as jnp
        import numpy as np
        import torch

        from handjax.losses.digit import PARENTS_21, encode_targets

        sys.path.insert(0, str(REPO / "tests"))
        from torch_reference.digit_torch import Model

        self._torch = torch
        self.threads = threads
        t0 = time.perf_counter()
        torch.manual_seed(0)
        self.model = Model(hrnet_kw=sizes["hrnet"], **sizes["spec"])
        self.model.train()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        size = batch["image"].shape[1]
        t = encode_targets({k: jnp.asarray(v) for k, v in batch.items() if k != "unit"}, size, size // 4)
        self.t = {k: torch.from_numpy(np.array(v)) for k, v in t.items()}
        self.t["segm"] = self.t["segm"].long()
        self.x = torch.from_numpy(batch["unit"]).permute(0, 3, 1, 2).contiguous()
        if memory_format == "channels_last":  # NHWC kernels (often faster for convolutions on CPU)
            self.model = self.model.to(memory_format=torch.channels_last)
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.parents = torch.tensor(PARENTS_21)
        self.first_loss = self.run(1)
        self.setup_s = time.perf_counter() - t0

    def loss(self, out):
        torch, t = self._torch, self.t
        F = torch.nn.functional
        j, v = out["joints25d"], t["joint_valid"]
        l_joint = torch.mean(torch.abs(j - t["joints25d"]) * v[..., None])
        l_root = torch.mean(torch.abs(out["rel_root"] - t["rel_root"]) * t["root_valid"])
        bce = F.binary_cross_entropy_with_logits(out["hand_logits"], t["hand_type"], reduction="none").mean(-1)
        l_hand = torch.mean(bce * t["hand_type_valid"])
        ce = F.cross_entropy(out["segm_logits"], t["segm"], reduction="none")
        l_segm = torch.mean(ce * t["segm_valid"][:, None, None])
        l_bone = 0.0
        for off in (0, 21):
            c, p = torch.arange(20) + off, self.parents + off
            d = (j[:, c] - j[:, p]) - (t["joints25d"][:, c] - t["joints25d"][:, p])
            l_bone = l_bone + torch.mean(d ** 2 * (v[:, c] * v[:, p])[..., None])
        return l_joint + l_root + l_hand + 10.0 * l_segm + 0.1 * l_bone

    def run(self, n):
        self._torch.set_num_threads(self.threads)
        loss = None
        for _ in range(n):
            self.opt.zero_grad(set_to_none=True)
            loss = self.loss(self.model(self.x))
            loss.backward()
            self.opt.step()
        return float(loss.detach())


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "benchmarks"))
    from handjax import host_memory

    os.environ["HANDJAX_MALLOC"] = args.malloc
    kept = host_memory.keep_freed_memory()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import torch
    from hrnet_bench import time_rounds

    sizes = model_sizes(args.small)
    batch = make_batch(args.batch, args.size)
    print(f"jax {jax.__version__}, torch {torch.__version__}, cores={len(os.sched_getaffinity(0))}, load avg="
          f"{os.getloadavg()[0]:.1f}, malloc={args.malloc} (kept: {kept})")
    print(f"DIGIT {sizes['backbone']} {sizes['backbone_kw'] or ''} head {sizes['spec']}; batch={args.batch}, "
          f"size={args.size}; train step (5 loss terms, backward, Adam); rounds={args.rounds} x {args.steps}")
    runners = {f"jax/{impl}": JaxRunner(sizes, batch, impl) for impl in args.conv_impl}
    if not args.skip_torch:
        default = torch.get_num_threads()
        for t in args.torch_threads:
            for fmt in args.torch_memory_format:
                r = TorchRunner(sizes, batch, t or default, fmt)
                runners[f"torch/{r.threads}t" + ("/cl" if fmt == "channels_last" else "")] = r
    wall = time_rounds(runners, args)
    med = {k: statistics.median(v) for k, v in wall.items()}
    print(f"\n{'runner':>14} {'ms/step':>10} {'images/s':>9} {'setup s':>8} {'first loss':>11}")
    for name, r in runners.items():
        print(f"{name:>14} {med[name] * 1e3:>10.1f} {args.batch / med[name]:>9.2f} {r.setup_s:>8.1f} "
              f"{r.first_loss:>11.4f}")
    torch_names = [n for n in med if n.startswith("torch")]
    for jname in [n for n in med if n.startswith("jax")]:
        for tname in torch_names:
            print(f"{jname} vs {tname}: {med[tname] / med[jname]:.2f}x (speed ratio, median wall)")


if __name__ == "__main__":
    main()
