"""Fine-tune train-step throughput: handjax ResNet (JAX/XLA-CPU) vs the same network in PyTorch.

Step = ResNet backbone (BN in train mode) + MLP head (F -> 512 -> 109), MSE loss
against random targets, Adam (lr 1e-4); JAX runs one jitted step with donated
state, PyTorch the same architecture (tests/torch_reference/resnet_torch.py)
with zero_grad/backward/step. Both run in this process, alternating in rounds
so that load from other processes hits them alike; warm-up and compilation are
excluded. Reported: median wall ms/step, images/s, best round, process CPU
ms/step (all threads; equals wall when a runner gets one core), setup time.

    .venv/bin/python benchmarks/train_step_bench.py                 # ResNet-18 and -50, 16 x 128^2
    .venv/bin/python benchmarks/train_step_bench.py --depth 18 --batch 8 --size 224
    .venv/bin/python benchmarks/train_step_bench.py --cores 1       # both pinned to one core
    .venv/bin/python benchmarks/train_step_bench.py --xla-flags="--xla_cpu_multi_thread_eigen=false"
    .venv/bin/python benchmarks/train_step_bench.py --conv-impl auto xla --malloc default   # ablations

Defaults: the model as handjax trains it (ResNet ``conv_impl="auto"``: Winograd 3x3
convolutions on CPU), freed host memory kept as ``handjax.main`` does
(``--malloc keep``, handjax.host_memory; set before either framework starts, so it
applies to torch too), no extra XLA flags (DEFAULT_XLA_FLAGS is empty on purpose:
none of the flags below beat jaxlib 0.10.2's defaults, which already run
convolutions and dots through YNNPACK), float32, NHWC; torch is timed with its
default thread count (= cores, "parity") and with 1 thread.

What moved the ratio to >= 1.0x (2-core AMD EPYC VM with AVX-512, quiet; third session):

  1. Winograd 3x3 convolutions (handjax.models.winograd, conv_impl="auto"): F(4x4, 3x3)
     on maps >= 16^2 and F(2x2, 3x3) below, as transforms (fused adds over strided
     slices) + batched GEMMs, with a Winograd custom VJP (dU = V^T dM, dV = dM U^T).
     Per stride-1 3x3 convolution of ResNet-18 (batch 16, value + both gradients):
     32^2x64 24.7 -> 8.9 ms, 16^2x128 12.8 -> 6.0, 8^2x256 12.4 -> 7.8, 4^2x512 18.1 -> 9.0.
     Whole step: 0.75-0.79x -> 0.98-1.08x. Getting there took three fixes measured per
     layer: build the transforms as one stack of lincombs per separable pass (16
     separate fusions + a concatenate were 2x slower), the weight transform as one
     (a^2, 9) @ (9, C_in*C_out) GEMM (an einsum with the 3x3 factors was 30x slower at
     512 channels), and the input gradient through the adjoint input transform
     (dM U^T) instead of a second Winograd convolution with the flipped, transposed
     kernel (the (3,3,512,512) transpose alone cost ~9 ms).
  2. Keeping freed host memory (handjax.host_memory): XLA-CPU allocates each step's
     ~300 MB temporary buffer afresh and glibc mmaps/unmaps it, so every step took
     74,000 minor page faults and ~150 ms of kernel CPU time. mallopt (one arena, no
     mmap, no trim) -> ~0 faults; step ~380 -> ~310 ms; torch unchanged; peak RSS
     unchanged (2.0 GB). (GLIBC_TUNABLES=glibc.malloc.hugetlb=1 has a similar effect
     via transparent huge pages, but only as an environment variable at start-up.)

  Not useful: stride-2 3x3 and the 7x7 stem as im2col + GEMM (stem 2x slower; stride-2
  layers within noise), --xla_cpu_prefer_vector_width=512 (+8 %), the concurrency-
  optimised scheduler off (noise).

Results at the defaults, third session (ResNet-18 / ResNet-50, batch 16, 128^2; runs
of the whole script, median ms/step; "ablation" runs add --conv-impl auto xla in the
same process, which makes both JAX runners a little noisier):

  run                        depth  jax (auto)  jax-xla  torch/2t  jax/torch  jax-xla/torch
  defaults                   18          307.6       -      366.1     1.19x        -
  defaults                   50         1015.2       -     1117.0     1.10x        -
  ablation, malloc keep      18          379.0    549.1     443.1     1.17x      0.81x
  ablation, malloc keep      50          960.8   1101.6    1057.5     1.10x      0.96x
  ablation, malloc default   18          373.4    494.0     382.1     1.02x      0.77x
  ablation, malloc default   50         1163.3   1307.4    1183.1     1.02x      0.90x

Earlier experiments (first two sessions; 2-core AVX2 VM shared with other jobs, load average 4-9; ResNet-18,
16 x 128 x 128; "CPU ms" = process CPU time per step on one core, the most
stable measure here; A/B pairs were interleaved in one process):

  change                                                   ResNet-18 CPU ms     effect
  baseline: nnx.Conv 1x1 convs, reduce_window max-pool     870-890              -
  custom max-pool (9 strided views + first-max VJP)        820-830              -6 %
  1x1 convs as (B*H*W, Cin) @ (Cin, Cout) matmul           805                  -2 % (ResNet-50: -20 %, 3570 -> 2070 ms)
  --xla_cpu_multi_thread_eigen=false (2 cores, wall)       +3 %                 worse/noise
  --xla_cpu_enable_fast_math=true (2 cores, wall)          -3 %                 noise
  --xla_cpu_enable_fast_min_max=true                       +2 %                 noise
  YNNPACK off (Eigen convs, ynn_fusion_type="")            +16 %                worse
  YNN individual convs only / + dot,eltwise,reduce         +16 % / +12 %        worse
  XNNPACK convs instead of YNN                             +14 %                worse
  XNN graph fusion GREEDY, oneDNN dots                     +-1 %                noise
  concurrency-optimised scheduler off / vector width 256   +1 % / +3 %          noise
  xla_cpu_use_thunk_runtime=false                          -                    flag no longer supported
  3x3 convs in NCHW (transposes around each conv)          +-1 %                noise
  im2col + matmul for 3x3 convs                            +28 %                worse
  conv1 as space-to-depth 4x4 conv on 12 channels          +7 %                 worse
  one-pass BN variance / custom-VJP BN                     +-1 %                noise (two-pass kept)
  bfloat16 compute dtype                                   +34 %                worse (no AVX512-BF16)
  jax_default_matmul_precision=bfloat16                    +-2 %                noise (f32 on CPU anyway)
  persistent compilation cache (2nd process)               setup 18.4 -> 3.4 s  compile time only
  --xla_cpu_use_onednn / _experimental_onednn_custom_call   0.76x -> 0.79-0.81x      noise (same run-to-run spread)
  3x3 weight gradient as 9 GEMMs over shifted views        +20 to +100 % per conv   worse (XLA's conv is fastest)
  3x3 weight gradient as im2col + one GEMM                 +10 to +200 % per conv   worse
  torch side: channels_last                                torch -5 %
  torch side: 2 threads vs 1 thread under load             torch 3-7x SLOWER (OpenMP barriers stall when a core is taken)

Results of the second session (before Winograd and the allocator setting; AVX2 VM;
two runs of the whole script):

  run / depth          runner     ms/step  images/s  CPU ms   JAX/runner
  A (quiet) 18         jax           480     33.4      809
  A (quiet) 18         torch/2t      364     44.0      724     0.76x
  A (quiet) 18         torch/1t      674     23.7      678     1.41x
  A (busy)  50         jax          2272      7.0     2122
  A (busy)  50         torch/2t     6457      2.5     6077     2.84x
  A (busy)  50         torch/1t     1825      8.8     1803     0.80x
  B (busy)  18         jax           840     19.1      793
  B (busy)  18         torch/2t     4729      3.4     4660     5.63x
  B (busy)  18         torch/1t      665     24.1      659     0.79x
  B (busy)  50         jax          2220      7.2     2096
  B (busy)  50         torch/2t    10880      1.5    10806     4.90x
  B (busy)  50         torch/1t     1886      8.5     1821     0.85x

Split of the gap in the second session (ResNet-18, 16 x 128^2, train-mode BN, 2 cores):
forward 150 vs 115 ms (0.77x), backward alone 328 vs 198 ms (0.60x); per convolution
XLA's input- and weight-gradient kernels cost about one forward each. The conclusion
then, that only a better convolution library could close the gap, was wrong: changing
the algorithm (Winograd, above) and the allocator behaviour closed it.

With both cores free (run A, ResNet-18) JAX reaches 0.76x of PyTorch (the starting
point quoted for a linen ResNet-18 was about 0.45x; the max-pool and 1x1 changes cut
CPU ms by 8 % on ResNet-18 and 42 % on ResNet-50). JAX is 10-15 % less efficient per core
(CPU ms) and uses the second core less well (CPU/wall 1.7 vs 2.0). When other jobs
hold a core ("busy"), XLA degrades gracefully while torch's two OpenMP threads
collapse, so JAX is 3-6x faster than torch's default threading; the fair
one-core comparison is then torch/1t (0.8-0.85x).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Best settings found on the 2-core AVX2 dev machine: the defaults (see the table above).
DEFAULT_XLA_FLAGS = ""

HEAD_HIDDEN = 512
N_OUT = 109


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depth", type=int, nargs="+", default=[18, 50], choices=[18, 34, 50])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=128, help="square image side")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per runner (alternating)")
    p.add_argument("--steps", type=int, default=2, help="steps per round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--xla-flags", default="", help="extra XLA_FLAGS appended to the defaults")
    p.add_argument("--no-default-xla-flags", action="store_true", help="do not add DEFAULT_XLA_FLAGS")
    p.add_argument("--cores", type=int, default=0,
                   help="pin the process to this many cores first (0 = all); XLA sizes its pools to the affinity")
    p.add_argument("--torch-threads", type=int, nargs="+", default=[0, 1],
                   help="torch.set_num_threads value(s) to time, alternating (0 = torch's default)")
    p.add_argument("--torch-channels-last", action="store_true", help="torch.channels_last memory format")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="JAX compute dtype")
    p.add_argument("--matmul-precision", default=None, help="jax_default_matmul_precision")
    p.add_argument("--skip-torch", action="store_true")
    p.add_argument("--skip-jax", action="store_true")
    p.add_argument("--malloc", default="keep", choices=["keep", "default"],
                   help="glibc malloc: 'keep' freed memory (handjax.host_memory, what handjax.main does when JAX "
                        "runs on the CPU) or glibc's 'default'; applies to both frameworks (same process)")
    p.add_argument("--conv-impl", nargs="+", default=["auto"], choices=["auto", "winograd", "xla"],
                   help="ResNet conv_impl value(s) to time (3x3 / stride-1 convolutions; 'auto' = Winograd on CPU)")
    return p.parse_args(argv)


def pin_cores(n: int) -> None:
    """Restrict this process to its first n allowed cores (before jax/torch start thread pools)."""
    if n:
        allowed = sorted(os.sched_getaffinity(0))
        if n > len(allowed):
            raise ValueError(f"--cores {n}: only {len(allowed)} cores are available")
        os.sched_setaffinity(0, allowed[:n])


def configure_xla(args: argparse.Namespace) -> str:
    """Set XLA_FLAGS before jax is imported; returns the flags in effect."""
    parts = [os.environ.get("XLA_FLAGS", "")]
    if not args.no_default_xla_flags:
        parts.append(DEFAULT_XLA_FLAGS)
    parts.append(args.xla_flags)
    flags = " ".join(p for p in parts if p).strip()
    os.environ["XLA_FLAGS"] = flags
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    return flags


# ----------------------------------------------------------------------------- JAX side
def make_jax_step(depth: int, args: argparse.Namespace, conv_impl: str = "auto"):
    """Returns (step, state, x, y): ``state, loss = step(state, x, y)`` with donated state."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from handjax.models import ResNet

    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32

    class Regressor(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            self.backbone = ResNet(depth, rngs=rngs, dtype=dtype, conv_impl=conv_impl)
            f = self.backbone.num_features
            self.fc1 = nnx.Linear(f, HEAD_HIDDEN, rngs=rngs, dtype=dtype)
            self.fc2 = nnx.Linear(HEAD_HIDDEN, N_OUT, rngs=rngs, dtype=dtype)

        def __call__(self, x):
            return self.fc2(nnx.relu(self.fc1(self.backbone(x)))).astype(jnp.float32)

    model = Regressor(nnx.Rngs(0))
    model.train()
    opt = nnx.Optimizer(model, optax.adam(args.lr), wrt=nnx.Param)
    graphdef, state = nnx.split((model, opt))

    def step(state, x, y):
        model, opt = nnx.merge(graphdef, state)

        def loss_fn(m):
            return jnp.mean(jnp.square(m(x) - y))

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return nnx.state((model, opt)), loss

    rng = jax.random.key(1)
    x = jax.random.normal(rng, (args.batch, args.size, args.size, 3), jnp.float32)
    y = jax.random.normal(jax.random.fold_in(rng, 1), (args.batch, N_OUT), jnp.float32)
    return jax.jit(step, donate_argnums=0), state, x, y


class JaxRunner:
    def __init__(self, depth, args, conv_impl: str = "auto"):
        import jax

        self._jax = jax
        t0 = time.perf_counter()
        self.step, self.state, self.x, self.y = make_jax_step(depth, args, conv_impl)
        self.state, loss = self.step(self.state, self.x, self.y)
        jax.block_until_ready(loss)
        self.compile_s = time.perf_counter() - t0
        self.first_loss = float(loss)

    def run(self, n: int) -> float:
        if n <= 0:
            return float("nan")
        loss = None
        for _ in range(n):
            self.state, loss = self.step(self.state, self.x, self.y)
        self._jax.block_until_ready(loss)
        return float(loss)


# ----------------------------------------------------------------------------- torch side
class TorchRunner:
    def __init__(self, depth, args, threads: int):
        import torch
        from torch import nn

        sys.path.insert(0, str(REPO / "tests"))
        from torch_reference.resnet_torch import ResNet as TorchResNet

        self._torch = torch
        self.threads = threads
        t0 = time.perf_counter()
        torch.manual_seed(0)
        self.model = TorchResNet(depth)
        f = self.model.num_features
        self.model.fc = nn.Sequential(nn.Linear(f, HEAD_HIDDEN), nn.ReLU(), nn.Linear(HEAD_HIDDEN, N_OUT))
        self.model.train()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=args.lr)
        self.x = torch.randn(args.batch, 3, args.size, args.size)
        self.y = torch.randn(args.batch, N_OUT)
        if args.torch_channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.first_loss = self.run(1)
        self.compile_s = time.perf_counter() - t0

    def run(self, n: int) -> float:
        if n <= 0:
            return float("nan")
        self._torch.set_num_threads(self.threads)
        loss = None
        for _ in range(n):
            self.opt.zero_grad(set_to_none=True)
            loss = self._torch.nn.functional.mse_loss(self.model(self.x), self.y)
            loss.backward()
            self.opt.step()
        return float(loss.detach())


# ----------------------------------------------------------------------------- driver
def time_rounds(runners: dict, args) -> tuple[dict, dict]:
    """Warm up every runner, then alternate timed rounds.

    Returns wall seconds and process CPU seconds per step, per runner and round.
    """
    for r in runners.values():
        r.run(args.warmup)
    wall = {k: [] for k in runners}
    cpu = {k: [] for k in runners}
    for _ in range(args.rounds):
        for name, r in runners.items():
            t0, c0 = time.perf_counter(), time.process_time()
            r.run(args.steps)
            wall[name].append((time.perf_counter() - t0) / args.steps)
            cpu[name].append((time.process_time() - c0) / args.steps)
    return wall, cpu


def main(argv=None) -> None:
    args = parse_args(argv)
    pin_cores(args.cores)
    sys.path.insert(0, str(REPO))
    from handjax import host_memory  # does not import jax

    os.environ["HANDJAX_MALLOC"] = args.malloc
    malloc_kept = host_memory.keep_freed_memory()  # before jax and torch allocate
    flags = configure_xla(args)
    import jax
    import torch

    if args.matmul_precision:
        jax.config.update("jax_default_matmul_precision", args.matmul_precision)
    default_threads = torch.get_num_threads()  # = usable cores unless OMP_NUM_THREADS says otherwise

    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__}, "
          f"cores={len(os.sched_getaffinity(0))}/{os.cpu_count()}, load avg={os.getloadavg()[0]:.1f}")
    print(f"XLA_FLAGS={flags!r}, malloc={args.malloc} (freed memory kept: {malloc_kept})")
    print(f"batch={args.batch}, size={args.size}, jax dtype={args.dtype}, torch channels_last="
          f"{args.torch_channels_last}, rounds={args.rounds} x {args.steps} steps (+{args.warmup} warm-up)")
    rows = []
    for depth in args.depth:
        runners = {}
        if not args.skip_jax:
            for impl in args.conv_impl:
                runners["jax" if impl == "auto" else f"jax-{impl}"] = JaxRunner(depth, args, impl)
        if not args.skip_torch:
            for t in args.torch_threads:
                r = TorchRunner(depth, args, t or default_threads)
                runners[f"torch/{r.threads}t"] = r
        wall, cpu = time_rounds(runners, args)
        med = {k: statistics.median(v) for k, v in wall.items()}
        for name, r in runners.items():
            rows.append((depth, name, med[name] * 1e3, args.batch / med[name], min(wall[name]) * 1e3,
                         statistics.median(cpu[name]) * 1e3, r.compile_s))
        for jname in [n for n in med if n.startswith("jax")]:
            for name in med:
                if name.startswith("torch"):
                    rows.append((depth, f"{jname}/{name}", None, med[name] / med[jname], None, None, None))
    print(f"\n{'depth':>5} {'runner':>20} {'ms/step':>9} {'images/s':>9} {'best ms':>9} {'cpu ms':>9} {'setup s':>8}")
    for depth, name, ms, ips, best, cpu_ms, setup in rows:
        if ms is None:
            print(f"{depth:>5} {name:>20} {'':>9} {ips:>8.2f}x   (speed ratio, median wall)")
        else:
            print(f"{depth:>5} {name:>20} {ms:>9.1f} {ips:>9.2f} {best:>9.1f} {cpu_ms:>9.1f} {setup:>8.1f}")


if __name__ == "__main__":
    main()
