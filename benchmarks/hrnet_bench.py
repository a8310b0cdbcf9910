"""HRNet forward + backward on CPU: handjax (JAX/XLA) vs the same network in PyTorch, one process.

Step = HRNet backbone in train mode (batch-statistics BN, running averages updated) on a fixed
batch, loss = mean((hr - target)^2) on the high-resolution map DIGIT reads (``features(x)['hr']``,
``(B, H/4, W/4, width)``), and the gradient of every parameter (no optimiser: forward + backward
only). JAX runs one jitted ``value_and_grad`` with the model state donated and returned (the BN
statistics move); PyTorch runs the reference pose-HRNet (tests/torch_reference/hrnet_torch.py)
with ``zero_grad`` / ``backward``. Runners alternate in rounds so that load from other processes
hits them alike; warm-up and compilation are excluded.

PyTorch is timed in each setting asked for (threads x memory format; by default its default
thread count and 1 thread, each NCHW and channels_last) and the ratio is printed against every
torch setting and against the fastest one ("best"), which is the number to quote.

    .venv/bin/python benchmarks/hrnet_bench.py                          # HRNet-W32, 8 x 256^2
    .venv/bin/python benchmarks/hrnet_bench.py --spec hrnet_w18_small --batch 16 --size 128
    .venv/bin/python benchmarks/hrnet_bench.py --conv-impl auto xla     # Winograd vs XLA convs
    .venv/bin/python benchmarks/hrnet_bench.py --width 4 --layer1-blocks 1 --stages 1,1 1,1 1,1 \\
        --size 32 --batch 2 --rounds 1 --steps 1 --warmup 0            # smoke run

Defaults as handjax trains: ``conv_impl="auto"`` (Winograd 3x3 / stride-1 convolutions on CPU),
freed host memory kept (``handjax.host_memory``, as ``handjax.main`` does; set before either
framework allocates, so it applies to torch too; ``--malloc default`` turns it off), float32.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", default="hrnet_w32", help="registered HRNet name (hrnet_w32, hrnet_w18, hrnet_w18_small)")
    p.add_argument("--width", type=int, default=None, help="override the spec's width")
    p.add_argument("--layer1-blocks", type=int, default=None, help="override the spec's layer1 Bottleneck count")
    p.add_argument("--stages", nargs=3, default=None, metavar="M,B",
                   help="override (modules, blocks) of stages 2, 3, 4, e.g. 1,1 1,1 1,1")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=256, help="square image side (a multiple of 32)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per runner (alternating)")
    p.add_argument("--steps", type=int, default=1, help="steps per round")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps after compilation")
    p.add_argument("--conv-impl", nargs="+", default=["auto"], choices=["auto", "winograd", "xla"],
                   help="handjax conv_impl value(s) to time")
    p.add_argument("--torch-threads", type=int, nargs="+", default=[0, 1],
                   help="torch.set_num_threads value(s) to time (0 = torch's default, the usable cores)")
    p.add_argument("--torch-memory-format", nargs="+", default=["nchw", "channels_last"],
                   choices=["nchw", "channels_last"], help="torch memory format(s) to time")
    p.add_argument("--malloc", default="keep", choices=["keep", "default"],
                   help="glibc malloc: keep freed memory (handjax.host_memory) or glibc's default; both frameworks")
    p.add_argument("--skip-torch", action="store_true")
    p.add_argument("--skip-jax", action="store_true")
    args = p.parse_args(argv)
    if args.size % 32:
        p.error(f"--size must be a multiple of 32 (HRNet's branches), got {args.size}")
    if args.stages is not None:
        try:
            args.stages = tuple(tuple(int(v) for v in s.split(",")) for s in args.stages)
        except ValueError:
            p.error(f"--stages: expected three M,B pairs of ints, got {args.stages}")
    return args


def spec_of(args):
    import dataclasses

    from handjax.models.hrnet import HRNET_SPECS

    if args.spec not in HRNET_SPECS:
        raise SystemExit(f"--spec: unknown HRNet {args.spec!r}; known: {', '.join(HRNET_SPECS)}")
    over = {k: v for k, v in (("width", args.width), ("layer1_blocks", args.layer1_blocks),
                              ("stages", args.stages)) if v is not None}
    return dataclasses.replace(HRNET_SPECS[args.spec], **over)


# ----------------------------------------------------------------------------- JAX side
class JaxRunner:
    """Jitted value_and_grad of the train-mode loss; model state donated and returned."""

    def __init__(self, spec, args, conv_impl: str):
        import jax
        import jax.numpy as jnp
        from flax import nnx

        from handjax.models.hrnet import HRNet

        self._jax = jax
        t0 = time.perf_counter()
        model = HRNet(spec, rngs=nnx.Rngs(0), conv_impl=conv_impl)
        model.train()
        graphdef, state = nnx.split(model)

        def step(state, x, y):
            m = nnx.merge(graphdef, state)

            def loss_fn(m):
                return jnp.mean(jnp.square(m.features(x)["hr"] - y))

            loss, grads = nnx.value_and_grad(loss_fn)(m)
            return nnx.state(m), loss, grads

        key = jax.random.key(1)
        self.x = jax.random.uniform(key, (args.batch, args.size, args.size, 3), jnp.float32)
        hw = args.size // 4
        self.y = jax.random.normal(jax.random.fold_in(key, 1), (args.batch, hw, hw, spec.width), jnp.float32)
        self.step = jax.jit(step, donate_argnums=0)
        self.state = state
        self.first_loss = self.run(1)
        self.setup_s = time.perf_counter() - t0

    def run(self, n: int) -> float:
        loss = grads = None
        for _ in range(n):
            self.state, loss, grads = self.step(self.state, self.x, self.y)
        self._jax.block_until_ready((loss, grads))
        return float(loss) if loss is not None else float("nan")


# ----------------------------------------------------------------------------- torch side
class TorchRunner:
    def __init__(self, spec, args, threads: int, memory_format: str):
        import torch

        sys.path.insert(0, str(REPO / "tests"))
        from torch_reference.hrnet_torch import PoseHRNet

        self._torch = torch
        self.threads = threads
        t0 = time.perf_counter()
        torch.manual_seed(0)
        self.model = PoseHRNet(spec.width, spec.layer1_blocks, spec.stages, layer1_planes=spec.layer1_planes)
        self.model.train()
        g = torch.Generator().manual_seed(1)
        self.x = torch.rand(args.batch, 3, args.size, args.size, generator=g)
        hw = args.size // 4
        self.y = torch.randn(args.batch, spec.width, hw, hw, generator=g)
        if memory_format == "channels_last":
            self.model = self.model.to(memory_format=torch.channels_last)
            self.x = self.x.contiguous(memory_format=torch.channels_last)
            self.y = self.y.contiguous(memory_format=torch.channels_last)
        self.first_loss = self.run(1)
        self.setup_s = time.perf_counter() - t0

    def run(self, n: int) -> float:
        self._torch.set_num_threads(self.threads)
        loss = None
        for _ in range(n):
            self.model.zero_grad(set_to_none=True)
            loss = self._torch.mean((self.model(self.x) - self.y) ** 2)
            loss.backward()
        return float(loss.detach()) if loss is not None else float("nan")


# ----------------------------------------------------------------------------- driver
def time_rounds(runners: dict, args) -> dict:
    """Warm up every runner, then alternate timed rounds; wall seconds per step, per runner."""
    for r in runners.values():
        if args.warmup:
            r.run(args.warmup)
    wall = {k: [] for k in runners}
    for _ in range(args.rounds):
        for name, r in runners.items():
            t0 = time.perf_counter()
            r.run(args.steps)
            wall[name].append((time.perf_counter() - t0) / args.steps)
    return wall


def main(argv=None) -> None:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))
    from handjax import host_memory  # does not import jax

    os.environ["HANDJAX_MALLOC"] = args.malloc
    malloc_kept = host_memory.keep_freed_memory()  # before jax and torch allocate
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import torch

    spec = spec_of(args)
    default_threads = torch.get_num_threads()
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__}, "
          f"cores={len(os.sched_getaffinity(0))}/{os.cpu_count()}, load avg={os.getloadavg()[0]:.1f}, "
          f"malloc={args.malloc} (freed memory kept: {malloc_kept})")
    print(f"{args.spec}: {spec}; batch={args.batch}, size={args.size}, train-mode BN, forward + backward; "
          f"rounds={args.rounds} x {args.steps} steps (+{args.warmup} warm-up)")
    runners = {}
    if not args.skip_jax:
        for impl in args.conv_impl:
            runners[f"jax/{impl}"] = JaxRunner(spec, args, impl)
    if not args.skip_torch:
        for t in args.torch_threads:
            for fmt in args.torch_memory_format:
                r = TorchRunner(spec, args, t or default_threads, fmt)
                runners[f"torch/{r.threads}t/{fmt}"] = r
    wall = time_rounds(runners, args)
    med = {k: statistics.median(v) for k, v in wall.items()}
    print(f"\n{'runner':>26} {'ms/step':>10} {'images/s':>9} {'best ms':>10} {'setup s':>8} {'first loss':>11}")
    for name, r in runners.items():
        print(f"{name:>26} {med[name] * 1e3:>10.1f} {args.batch / med[name]:>9.2f} {min(wall[name]) * 1e3:>10.1f} "
              f"{r.setup_s:>8.1f} {r.first_loss:>11.4f}")
    torch_names = [n for n in med if n.startswith("torch")]
    if torch_names:
        best = min(torch_names, key=med.get)
        for jname in [n for n in med if n.startswith("jax")]:
            for tname in torch_names:
                print(f"{jname + ' vs ' + tname:>40}: {med[tname] / med[jname]:.2f}x (speed ratio, median wall)")
            print(f"{jname + ' vs torch best (' + best + ')':>40}: {med[best] / med[jname]:.2f}x")


if __name__ == "__main__":
    main()
