"""Benchmark handjax.render on a MANO-sized mesh (778 vertices, 1538 faces).

Rows: image size x batch. Columns: forward (rasterise + interpolate + Lambert shade)
and forward+backward (gradient of an L1 photometric loss w.r.t. the vertices) wall
times in ms (median over repeats, after a compile/warm-up call), compile times, and
XLA's temp-buffer size of the compiled fwd+bwd program.

    python benchmarks/render_bench.py                       # batch 32, 128 and 256
    python benchmarks/render_bench.py --sizes 64 --batch 4 --repeats 2   # quick
"""
from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from handjax.geometry import intrinsics
from handjax.mano.builtin import builtin_mano_arrays
from handjax.render import DEFAULT_FACE_CHUNK, DEFAULT_NEAR, render_mesh_batch
from handjax.render import visibility_strategy as render_strategy


def posed_batch(batch: int, size: int, seed: int = 0):
    """Builtin right-hand template, palm to the camera, 0.5 m away, filling the image.

    Each batch element gets a small random translation. Returns verts (B, V, 3) f32,
    faces (F, 3) int32, K (3, 3), vertex colours (V, 3)."""
    arrays = builtin_mano_arrays("right")
    v = np.asarray(arrays["v_template"], np.float64)
    # The builtin right hand's palm faces +y: turn it -90 deg about x to face the camera (-z).
    v = v @ np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]).T
    v = v - v.mean(0)
    extent = np.abs(v[:, :2]).max()
    rng = np.random.default_rng(seed)
    verts = v[None] + np.array([0.0, 0.0, 0.5]) + rng.normal(0, 0.005, (batch, 1, 3))
    focal = 0.45 * size * 0.5 / extent  # the hand spans ~90% of the image
    K = intrinsics(focal, focal, (size - 1) / 2, (size - 1) / 2)
    colours = (v - v.min(0)) / (v.max(0) - v.min(0))
    return (jnp.asarray(verts, jnp.float32), jnp.asarray(np.asarray(arrays["f"]), jnp.int32), K,
            jnp.asarray(colours, jnp.float32))


def visibility_strategy(verts, faces, K, size: int) -> str:
    """Which visibility pass the renderer runs for this batch (tiles / window / dense)."""
    return render_strategy(verts, faces, K, (size, size), near=DEFAULT_NEAR)


def time_call(fn, args, repeats: int):
    """(compile+first-call seconds, median steady-state ms)."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - t0) * 1e3)
    return first, statistics.median(times)


def bench(batch: int, size: int, repeats: int, face_chunk: int):
    verts, faces, K, colours = posed_batch(batch, size)
    render = functools.partial(
        render_mesh_batch, faces=faces, K=K, image_size=(size, size), vertex_colors=colours,
        background=0.5, face_chunk=face_chunk,
    )
    target = jax.jit(lambda v: render(v).rgb)(verts + jnp.array([0.003, -0.002, 0.0]))

    @jax.jit
    def forward(v):
        out = render(v)
        return out.rgb, out.mask

    @jax.jit
    def forward_backward(v):
        loss = lambda x: jnp.mean(jnp.abs(render(x).rgb - target))  # noqa: E731
        return jax.value_and_grad(loss)(v)

    compile_f, fwd_ms = time_call(forward, (verts,), repeats)
    compile_b, bwd_ms = time_call(forward_backward, (verts,), repeats)
    mem = forward_backward.lower(verts).compile().memory_analysis()
    temp_mb = getattr(mem, "temp_size_in_bytes", float("nan")) / 2**20 if mem is not None else float("nan")
    coverage = float(jnp.mean(forward(verts)[1]))
    return dict(size=size, batch=batch, fwd_ms=fwd_ms, fwdbwd_ms=bwd_ms, compile_f=compile_f,
                compile_b=compile_b, temp_mb=temp_mb, coverage=coverage,
                strategy=visibility_strategy(verts, faces, K, size))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--face-chunk", type=int, default=DEFAULT_FACE_CHUNK)
    args = parser.parse_args(argv)

    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
          f"mesh 778 v / 1538 f, face_chunk {args.face_chunk}, repeats {args.repeats}")
    header = (f"{'size':>9} {'batch':>5} {'cover':>6} {'visibility':>36} {'fwd ms':>10} {'fwd+bwd ms':>11} "
              f"{'compile s (f/b)':>16} {'temp MiB':>9}")
    print(header)
    print("-" * len(header))
    for size in args.sizes:
        r = bench(args.batch, size, args.repeats, args.face_chunk)
        print(f"{size:>4}x{size:<4} {r['batch']:>5} {r['coverage']:>6.2f} {r['strategy']:>36} {r['fwd_ms']:>10.1f} {r['fwdbwd_ms']:>11.1f} "
              f"{r['compile_f']:>7.1f}/{r['compile_b']:<8.1f} {r['temp_mb']:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
