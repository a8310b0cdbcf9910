"""torchvision-exact ResNet-18/34/50 backbones in Flax NNX.

Structure, parameter names and numerics follow torchvision's ``resnet18``,
``resnet34`` and ``resnet50`` (ResNet "v1.5": the Bottleneck stride sits on
the 3x3 ``conv2``), without the final ``fc`` layer (TempCLR deletes it and
regresses from the average-pooled features).

Conventions
-----------
* Images are NHWC, ``(B, H, W, 3)``; torchvision is NCHW, so transpose the
  input images (``x.permute(0, 2, 3, 1)``), never the pooled features.
* Every convolution is bias-free and uses explicit symmetric padding (7x7/2
  pad 3, 3x3 pad 1, 1x1 pad 0). Flax's ``'SAME'`` pads asymmetrically for
  stride 2 and is never used.
* The max-pool is 3x3 / stride 2 / pad 1 with the padding filled with -inf
  (``max_pool_3x3_s2``; its gradient goes to the first maximum of each
  window, as in torch).
* 1x1 convolutions (the Bottleneck's and every ``downsample``) run as a matrix
  product of the strided activations with the ``(C_in, C_out)`` kernel
  (``TorchConv``): the same arithmetic, much faster to differentiate on
  XLA-CPU. Parameters are unaffected.
* BatchNorm: eps 1e-5, running-average momentum 0.9 in the Flax convention
  (``new = 0.9 * old + 0.1 * batch``), which is torch's ``momentum=0.1``. In
  training mode the running variance is updated with the *unbiased* batch
  variance (``n / (n - 1)`` times the biased one, ``n = B * H * W``), exactly as
  torch does; the normalisation itself uses the biased variance, as in torch.
  ``unbiased_running_var=False`` gives Flax's ``nnx.BatchNorm`` behaviour.
* ``model.train()`` makes every BatchNorm use batch statistics and update its
  running averages; ``model.eval()`` makes it use the running averages.
* Under ``jax.jit`` with the batch sharded over a mesh axis the batch
  statistics are computed over the whole global batch (XLA inserts the
  collectives), like torch's ``SyncBatchNorm``; no ``axis_name`` is needed.

torchvision state_dict key -> NNX path
--------------------------------------
Split the torch key on ``.``; integer components index an ``nnx.List``; the
last component is renamed and the tensor re-laid-out:

==========================================  ==========================================  ======================
torchvision key                             NNX path                                    transform
==========================================  ==========================================  ======================
``conv1.weight``                            ``conv1.kernel``                            OIHW -> HWIO,
                                                                                        ``w.transpose(2,3,1,0)``
``bn1.weight`` / ``bn1.bias``               ``bn1.scale`` / ``bn1.bias``                none
``bn1.running_mean`` / ``running_var``      ``bn1.mean`` / ``bn1.var``                  none (``nnx.BatchStat``)
``bn1.num_batches_tracked``                 (dropped)                                   unused (momentum is set)
``layer{L}.{i}.conv{k}.weight``             ``layer{L}[i].conv{k}.kernel``              OIHW -> HWIO
``layer{L}.{i}.bn{k}.{weight,bias,...}``    ``layer{L}[i].bn{k}.{scale,bias,mean,var}``  as ``bn1``
``layer{L}.{i}.downsample.0.weight``        ``layer{L}[i].downsample[0].kernel``        OIHW -> HWIO
``layer{L}.{i}.downsample.1.*``             ``layer{L}[i].downsample[1].*``             as ``bn1``
``fc.weight`` / ``fc.bias``                 (dropped)                                   no classifier here
==========================================  ==========================================  ======================

``k`` is 1, 2 (BasicBlock) or 1, 2, 3 (Bottleneck). ``downsample`` exists in
block 0 of every layer whose input and output shapes differ (layers 2-4 of
ResNet-18/34; all four layers of ResNet-50) and is ``None`` elsewhere. In
``nnx.state(model)`` the paths are tuples such as
``('layer2', 0, 'downsample', 1, 'mean')``.

Initialisation follows torchvision: convolutions use Kaiming-normal with
``mode='fan_out'`` and ReLU gain, BatchNorm scale 1 and bias 0, running mean 0
and variance 1; ``zero_init_residual=True`` zeroes the scale of the last BN of
every residual branch.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from handjax.models.winograd import winograd_conv3x3

__all__ = ["BasicBlock", "Bottleneck", "CONV_IMPLS", "ResNet", "TorchBatchNorm", "TorchConv", "RESNET_SPECS",
           "max_pool_3x3_s2"]

# depth -> (block class name, blocks per stage)
RESNET_SPECS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
}

STAGE_PLANES = (64, 128, 256, 512)

CONV_IMPLS = ("auto", "winograd", "xla")  # algorithm of the 3x3 / stride-1 convolutions (TorchConv)

# torch.nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu"):
# N(0, 2 / fan_out) with fan_out = out_channels * kh * kw, untruncated.
kaiming_normal_fan_out = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


class TorchBatchNorm(nnx.Module):
    """BatchNorm over all axes but the last, numerically like ``torch.nn.BatchNorm2d``.

    Attributes ``scale``, ``bias`` (``nnx.Param``, shape ``(C,)``) and ``mean``,
    ``var`` (``nnx.BatchStat``, at least float32) mirror ``nnx.BatchNorm`` so filters and
    ``model.train()`` / ``model.eval()`` / ``nnx.view`` work the same way.

    Args:
      num_features: number of channels ``C`` (the last axis of the input).
      momentum: Flax convention, ``running = momentum * running + (1 - momentum)
        * batch``; 0.9 is torch's ``momentum=0.1``.
      epsilon: added to the variance before the square root (torch's ``eps``).
      unbiased_running_var: update the running variance with the unbiased batch
        variance (torch) instead of the biased one (Flax).
      use_running_average: True for eval mode (running statistics), False for
        train mode (batch statistics, running averages updated).
      dtype: compute/output dtype (statistics are always accumulated in at
        least float32); None means the input's dtype.
      param_dtype: dtype of ``scale`` and ``bias``.
      scale_init_value: initial value of every ``scale`` entry (1, or 0 for
        ``zero_init_residual``).
    """

    def __init__(
        self,
        num_features: int,
        *,
        momentum: float = 0.9,
        epsilon: float = 1e-5,
        unbiased_running_var: bool = True,
        use_running_average: bool = False,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        scale_init_value: float = 1.0,
        rngs: nnx.Rngs | None = None,
    ):
        del rngs  # deterministic initialisation; accepted for API symmetry
        if num_features <= 0:
            raise ValueError(f"TorchBatchNorm: num_features must be positive, got {num_features}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"TorchBatchNorm: momentum must be in [0, 1] (Flax convention), got {momentum}")
        self.scale = nnx.Param(jnp.full((num_features,), scale_init_value, param_dtype))
        self.bias = nnx.Param(jnp.zeros((num_features,), param_dtype))
        stat_dtype = jnp.promote_types(param_dtype, jnp.float32)
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), stat_dtype))
        self.var = nnx.BatchStat(jnp.ones((num_features,), stat_dtype))
        self.num_features = num_features
        self.momentum = momentum
        self.epsilon = epsilon
        self.unbiased_running_var = unbiased_running_var
        self.use_running_average = use_running_average
        self.dtype = dtype
        self.param_dtype = param_dtype

    def set_view(self, use_running_average: bool | None = None):
        """Hook used by ``nnx.view``."""
        if use_running_average is not None:
            self.use_running_average = use_running_average

    def _batch_stats(self, x: jax.Array) -> tuple[jax.Array, jax.Array, int]:
        """Per-channel mean and biased variance (two-pass, float32) and the count n."""
        axes = tuple(range(x.ndim - 1))
        n = 1
        for a in axes:
            n *= x.shape[a]
        if n < 2:
            raise ValueError(
                "TorchBatchNorm: training mode needs more than one value per channel, "
                f"got input shape {x.shape} (like torch's BatchNorm error)"
            )
        x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        mean = jnp.mean(x32, axis=axes)
        var = jnp.mean(jnp.square(x32 - mean), axis=axes)
        return mean, var, n

    def _update_running(self, mean: jax.Array, var: jax.Array, n: int) -> None:
        """Exponential moving average of the batch statistics (torch semantics)."""
        if self.unbiased_running_var:
            var = var * (n / (n - 1))
        m = self.momentum
        self.mean[...] = lax.stop_gradient(m * self.mean[...] + (1.0 - m) * mean)
        self.var[...] = lax.stop_gradient(m * self.var[...] + (1.0 - m) * var)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Normalise ``x`` of shape ``(..., C)``; returns the same shape."""
        if x.shape[-1] != self.num_features:
            raise ValueError(
                f"TorchBatchNorm: expected {self.num_features} channels on the last axis, "
                f"got input shape {x.shape}"
            )
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            mean, var, n = self._batch_stats(x)
            self._update_running(mean, var, n)
        dtype = self.dtype or x.dtype
        # torch: (x - mean) / sqrt(var + eps) * weight + bias
        mul = lax.rsqrt(var + self.epsilon) * self.scale[...].astype(var.dtype)
        y = (x.astype(dtype) - mean.astype(dtype)) * mul.astype(dtype) + self.bias[...].astype(dtype)
        return y


class TorchConv(nnx.Conv):
    """Bias-free k x k ``nnx.Conv`` with torch's symmetric padding ``k // 2``.

    Same parameter (``kernel``, HWIO) and numerics as ``nnx.Conv`` with explicit
    padding; 1x1 convolutions are computed as a matrix product of the
    (strided) ``(B*H*W, C_in)`` activations with the ``(C_in, C_out)`` kernel.
    That is the same sum of the same products, and on XLA-CPU it is much faster
    to differentiate than a 1x1 ``conv_general_dilated`` (measured: ResNet-50
    train step -20 % CPU time, see benchmarks/train_step_bench.py).

    ``conv_impl`` picks the algorithm of 3x3 / stride-1 convolutions (all others
    use XLA's convolution): ``"winograd"`` (``handjax.models.winograd``, Winograd
    F(4x4 or 2x2, 3x3) with matrix products; 1.6-2.8x faster than XLA's direct
    convolution on CPU), ``"xla"`` (``lax.conv_general_dilated``), or ``"auto"``:
    Winograd when tracing for the CPU backend in float32/float64, XLA otherwise
    (GPU/TPU convolution libraries choose their own algorithms; bfloat16 is too
    coarse for F(4x4, 3x3)). Parameters are the same either way.
    """

    def __init__(self, in_ch: int, out_ch: int, k: int, stride: int, *, rngs: nnx.Rngs, dtype, param_dtype, precision,
                 conv_impl: str = "auto"):
        if conv_impl not in CONV_IMPLS:
            raise ValueError(f"TorchConv: conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}")
        p = k // 2
        super().__init__(
            in_ch,
            out_ch,
            kernel_size=(k, k),
            strides=(stride, stride),
            padding=((p, p), (p, p)),
            use_bias=False,
            kernel_init=kaiming_normal_fan_out,
            dtype=dtype,
            param_dtype=param_dtype,
            precision=precision,
            rngs=rngs,
        )
        self.conv_impl = conv_impl

    def __call__(self, x: jax.Array) -> jax.Array:
        """``(B, H, W, C_in)`` -> ``(B, H_out, W_out, C_out)``."""
        kernel = self.kernel[...]
        dtype = self.dtype or jnp.result_type(x, kernel)
        if tuple(self.kernel_size) == (3, 3) and tuple(self.strides) == (1, 1) and self._winograd(dtype):
            return winograd_conv3x3(x.astype(dtype), kernel.astype(dtype), precision=self.precision)
        if tuple(self.kernel_size) != (1, 1):
            return super().__call__(x)
        sh, sw = self.strides
        xs = x[:, ::sh, ::sw, :]  # torch 1x1, pad 0: out = floor((H - 1) / s) + 1
        b, h, w, c = xs.shape
        y = jnp.dot(
            xs.reshape(b * h * w, c).astype(dtype),
            kernel.reshape(c, -1).astype(dtype),
            precision=self.precision,
        )
        return y.reshape(b, h, w, -1)

    def _winograd(self, dtype) -> bool:
        """Whether 3x3 / stride-1 convolutions run as Winograd (see the class docstring)."""
        if self.conv_impl == "auto":
            return jax.default_backend() == "cpu" and jnp.dtype(dtype) in (jnp.float32, jnp.float64)
        return self.conv_impl == "winograd"


def _conv(in_ch: int, out_ch: int, k: int, stride: int, **kw) -> TorchConv:
    return TorchConv(in_ch, out_ch, k, stride, **kw)


def _downsample(in_ch: int, out_ch: int, stride: int, conv_kw: dict, bn_kw: dict) -> nnx.List | None:
    """torchvision's ``downsample = Sequential(conv1x1(stride), BatchNorm)``, or None if shapes match."""
    if stride == 1 and in_ch == out_ch:
        return None
    return nnx.List([_conv(in_ch, out_ch, 1, stride, **conv_kw), TorchBatchNorm(out_ch, **bn_kw)])


def _shortcut(downsample: nnx.List | None, x: jax.Array) -> jax.Array:
    """Identity or ``downsample[1](downsample[0](x))``."""
    if downsample is None:
        return x
    conv, bn = downsample
    return bn(conv(x))


class BasicBlock(nnx.Module):
    """torchvision ``BasicBlock``: 3x3 (stride) -> BN -> ReLU -> 3x3 -> BN, + shortcut, ReLU.

    Input ``(B, H, W, in_planes)``, output ``(B, H/stride, W/stride, planes)``.
    """

    expansion = 1

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        *,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        precision=None,
        zero_init_residual: bool = False,
        bn_kwargs: dict | None = None,
        conv_impl: str = "auto",
    ):
        conv_kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, precision=precision, conv_impl=conv_impl)
        bn_kw = dict(dtype=dtype, param_dtype=param_dtype, **(bn_kwargs or {}))
        last_scale = 0.0 if zero_init_residual else 1.0
        self.zero_init_residual = zero_init_residual
        self.conv1 = _conv(in_planes, planes, 3, stride, **conv_kw)
        self.bn1 = TorchBatchNorm(planes, **bn_kw)
        self.conv2 = _conv(planes, planes, 3, 1, **conv_kw)
        self.bn2 = TorchBatchNorm(planes, scale_init_value=last_scale, **bn_kw)
        self.downsample = _downsample(in_planes, planes, stride, conv_kw, bn_kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return nnx.relu(y + _shortcut(self.downsample, x))


class Bottleneck(nnx.Module):
    """torchvision v1.5 ``Bottleneck``: 1x1 -> 3x3 (stride) -> 1x1 (x4), each with BN, + shortcut.

    Input ``(B, H, W, in_planes)``, output ``(B, H/stride, W/stride, 4 * planes)``.
    """

    expansion = 4

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        *,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        precision=None,
        zero_init_residual: bool = False,
        bn_kwargs: dict | None = None,
        conv_impl: str = "auto",
    ):
        conv_kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, precision=precision, conv_impl=conv_impl)
        bn_kw = dict(dtype=dtype, param_dtype=param_dtype, **(bn_kwargs or {}))
        last_scale = 0.0 if zero_init_residual else 1.0
        self.zero_init_residual = zero_init_residual
        out = planes * self.expansion
        self.conv1 = _conv(in_planes, planes, 1, 1, **conv_kw)
        self.bn1 = TorchBatchNorm(planes, **bn_kw)
        self.conv2 = _conv(planes, planes, 3, stride, **conv_kw)
        self.bn2 = TorchBatchNorm(planes, **bn_kw)
        self.conv3 = _conv(planes, out, 1, 1, **conv_kw)
        self.bn3 = TorchBatchNorm(out, scale_init_value=last_scale, **bn_kw)
        self.downsample = _downsample(in_planes, out, stride, conv_kw, bn_kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = nnx.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return nnx.relu(y + _shortcut(self.downsample, x))


def _pool_views(xp: jax.Array, out_h: int, out_w: int) -> list[jax.Array]:
    """The 9 stride-2 views ``xp[:, i::2, j::2, :]`` (i, j in 0..2, row-major) of the padded input."""
    b, _, _, c = xp.shape
    return [
        lax.slice(xp, (0, i, j, 0), (b, i + 2 * out_h - 1, j + 2 * out_w - 1, c), (1, 2, 2, 1))
        for i in range(3)
        for j in range(3)
    ]


def _pool_pad(x: jax.Array) -> tuple[jax.Array, int, int]:
    """-inf padding of 1 on H and W, and torch's floor-mode output size."""
    h, w = x.shape[1:3]
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
    return xp, (h - 1) // 2 + 1, (w - 1) // 2 + 1


@jax.custom_vjp
def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """torch ``MaxPool2d(3, stride=2, padding=1)`` on NHWC (-inf padding, floor mode).

    Values equal ``lax.reduce_window(x, -inf, lax.max, (1,3,3,1), (1,2,2,1),
    ((0,0),(1,1),(1,1),(0,0)))``; computed as the max of 9 strided views because
    XLA-CPU's reduce_window and its select-and-scatter gradient are slow. The
    gradient goes, like torch's, to the FIRST maximum of each window in
    row-major order (ties are not split).
    """
    xp, oh, ow = _pool_pad(x)
    views = _pool_views(xp, oh, ow)
    out = views[0]
    for v in views[1:]:
        out = jnp.maximum(out, v)
    return out


def _max_pool_fwd(x):
    y = max_pool_3x3_s2(x)
    return y, (x, y)


def _max_pool_bwd(res, g):
    """Route each output gradient to the first window position holding the max."""
    x, y = res
    xp, oh, ow = _pool_pad(x)
    hp, wp = xp.shape[1:3]
    taken = jnp.zeros(y.shape, bool)
    gxp = jnp.zeros(xp.shape, g.dtype)
    zero = jnp.array(0, g.dtype)
    for k, view in enumerate(_pool_views(xp, oh, ow)):
        i, j = divmod(k, 3)
        hit = (view == y) & ~taken
        taken = taken | hit
        # place g at rows i, i+2, ... and cols j, j+2, ... of the padded input
        pad_h = (i, hp - i - (2 * oh - 1), 1)
        pad_w = (j, wp - j - (2 * ow - 1), 1)
        gxp = gxp + lax.pad(jnp.where(hit, g, zero), zero, ((0, 0, 0), pad_h, pad_w, (0, 0, 0)))
    return (gxp[:, 1:-1, 1:-1, :],)


max_pool_3x3_s2.defvjp(_max_pool_fwd, _max_pool_bwd)


class ResNet(nnx.Module):
    """torchvision ResNet-18/34/50 without ``fc``.

    ``__call__(x)`` maps images ``(B, H, W, 3)`` (NHWC) to the average-pooled
    features ``(B, F)`` with F = 512 (18, 34) or 2048 (50). ``features(x)``
    also returns the spatial maps (see its docstring).

    Args:
      depth: 18, 34 or 50.
      rngs: random streams for the convolution kernels (``rngs.params``).
      dtype: compute dtype of convolutions and BN outputs (BN statistics are
        accumulated in float32).
      param_dtype: dtype of the parameters.
      zero_init_residual: zero the scale of the last BN in every block.
      precision: ``lax.Precision`` for the convolutions (None = backend
        default; use ``'highest'`` for float32 parity on GPU/TPU).
      bn_momentum: Flax-convention momentum (0.9 == torch 0.1).
      bn_epsilon: BN epsilon (torch 1e-5).
      unbiased_running_var: torch-style running-variance update (default).
      conv_impl: algorithm of the 3x3 / stride-1 convolutions, ``"auto"``
        (Winograd on CPU in float32/64, else XLA), ``"winograd"`` or ``"xla"``;
        see ``TorchConv``.
    """

    def __init__(
        self,
        depth: int,
        *,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        zero_init_residual: bool = False,
        precision=None,
        bn_momentum: float = 0.9,
        bn_epsilon: float = 1e-5,
        unbiased_running_var: bool = True,
        conv_impl: str = "auto",
    ):
        if depth not in RESNET_SPECS:
            raise ValueError(f"ResNet: depth must be one of {sorted(RESNET_SPECS)}, got {depth!r}")
        kind, blocks = RESNET_SPECS[depth]
        block_cls = BasicBlock if kind == "basic" else Bottleneck
        bn_kwargs = dict(momentum=bn_momentum, epsilon=bn_epsilon, unbiased_running_var=unbiased_running_var)
        common = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, precision=precision, conv_impl=conv_impl)

        self.depth = depth
        self.conv1 = _conv(3, 64, 7, 2, **common)
        self.bn1 = TorchBatchNorm(64, dtype=dtype, param_dtype=param_dtype, **bn_kwargs)
        in_planes = 64
        stages = []
        for stage, (planes, n_blocks) in enumerate(zip(STAGE_PLANES, blocks)):
            layer = []
            for i in range(n_blocks):
                stride = 2 if (stage > 0 and i == 0) else 1
                layer.append(
                    block_cls(
                        in_planes,
                        planes,
                        stride,
                        zero_init_residual=zero_init_residual,
                        bn_kwargs=bn_kwargs,
                        **common,
                    )
                )
                in_planes = planes * block_cls.expansion
            stages.append(nnx.List(layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.num_features = in_planes

    def _check_input(self, x: jax.Array) -> None:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(
                f"ResNet: expected NHWC images of shape (B, H, W, 3), got shape {x.shape}"
            )

    def features(self, x: jax.Array) -> dict[str, jax.Array]:
        """All intermediate maps of an NHWC image batch ``(B, H, W, 3)``.

        Returns a dict (shapes for ResNet-50, divide channels by 4 in layers 1-4
        for ResNet-18/34):
          ``stem``   ``(B, H/4, W/4, 64)`` after conv1-bn1-relu-maxpool
                     (TempCLR's ``maxpool`` key),
          ``layer1`` ``(B, H/4, W/4, 256)``, ``layer2`` ``(B, H/8, W/8, 512)``,
          ``layer3`` ``(B, H/16, W/16, 1024)``, ``layer4`` ``(B, H/32, W/32, 2048)``,
          ``pooled`` ``(B, 2048)`` spatial mean of layer4 (TempCLR's ``avg_pooling``).
        Spatial sizes follow torch's floor rules for odd sizes.
        """
        self._check_input(x)
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = max_pool_3x3_s2(y)
        out = {"stem": y}
        for name in ("layer1", "layer2", "layer3", "layer4"):
            for block in getattr(self, name):
                y = block(y)
            out[name] = y
        out["pooled"] = jnp.mean(y, axis=(1, 2))
        return out

    def __call__(self, x: jax.Array) -> jax.Array:
        """Average-pooled features ``(B, num_features)`` of NHWC images ``(B, H, W, 3)``."""
        return self.features(x)["pooled"]


def _register_resnets():
    from handjax.models.registry import register

    for depth in RESNET_SPECS:
        register("backbone", f"resnet{depth}")(lambda depth=depth, **kwargs: ResNet(depth, **kwargs))


_register_resnets()
