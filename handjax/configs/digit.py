"""DIGIT's configs as an importable function (``configs/digit.py`` documents the arguments)."""
import ml_collections

from handjax.config_utils import optim, parse_arg
from handjax.losses.digit import DEFAULT_WEIGHTS

# DIGIT's head at upstream width (handjax.models.digit.DigitSpec defaults)
PAPER_SPEC = dict(seg_mid=16, seg_hidden=64, seg_feat=(64, 512), unet_base=64, head=(64, 128, 256, 512, 512, 512),
                  fc=512, root_bins=64)
# a CPU-sized head: same structure, narrower
SMALL_SPEC = dict(seg_mid=8, seg_hidden=16, seg_feat=(16, 32), unet_base=16, head=(32, 32, 64, 64, 64, 64), fc=64,
                  root_bins=64)
TINY_SPEC = dict(seg_mid=4, seg_hidden=8, seg_feat=(8, 8), unet_base=4, head=(8, 8, 8, 8, 8, 8), fc=8, root_bins=64)


def _step_schedule(lr: float, num_steps: int) -> dict:
    """Adam at ``lr``, x0.1 at 80 % of training (upstream: epoch 40 of 50), no warm-up."""
    o = optim(lr, 0, schedule="step")
    o["decay_steps"] = (int(0.8 * num_steps),)
    o["decay_rate"] = 0.1
    return o


def get_config(arg=None):
    """DIGIT's config (``configs/digit.py`` documents the arguments)."""
    a = parse_arg(arg, recipe="default", size="default")
    if a.recipe not in ("default", "paper"):
        raise ValueError(f"config argument 'recipe' must be default or paper, got {a.recipe!r}")
    if a.size not in ("default", "tiny"):
        raise ValueError(f"config argument 'size' must be default or tiny, got {a.size!r}")
    c = ml_collections.ConfigDict()
    c.system = "digit"
    c.seed = 0
    c.stages = "train,eval"
    c.mano = dict(model_path="", allow_builtin=False)  # DIGIT uses no MANO model (only its data may)
    # square crop around both hands (crop='hands'), 1.25 x the hands' box as upstream's process_bbox. No flips here
    # (upstream flips, recipe=paper too): a flip swaps the hands' labels with the image, and the built-in scenes put
    # the right hand on the image's left in 79-85 % of two-hand frames; measured in the README's DIGIT section
    c.data = dict(name="two_hands", builder_config="default", data_dir="", manual_dir="", mano_model="",
                  image_size=64, joint_convention="ih26m", num_workers=0, crop="hands",
                  augment=dict(scale=0.15, rotation=0.0, shift=0.05, flip="none", brightness=0.2, contrast=0.2,
                               saturation=0.2, hue=0.0, bbox_pad=1.25))
    # input_norm: 'unit' = DIGIT's RGB / 255 input (the pipelines' ImageNet normalisation is undone in the model)
    c.model = dict(backbone="hrnet_w18_small", backbone_kw=dict(width=8, layer1_planes=16), spec=dict(SMALL_SPEC),
                   input_norm="unit", conv_impl="xla", backbone_init="kaiming")
    # conv_impl 'xla': XLA's own convolutions. The Winograd ones ('auto') step a little faster but made XLA-CPU
    # compile the train step for 26 min (2 min with 'xla'); the README's DIGIT section has the measured run.
    # micro_batches: upstream's gradient accumulation (2 x 32): the batch in k parts, BN statistics per part.
    # lr 2e-3 (upstream 1e-4 starts from ImageNet weights; here everything trains from scratch in 1500 steps)
    c.train = dict(num_steps=1500, batch_size=16, micro_batches=1, loss_weights=dict(DEFAULT_WEIGHTS),
                   optim=_step_schedule(2e-3, 1500), log_every=50, checkpoint_every=500, keep_checkpoints=2,
                   summary_every=500, eval_every=0, eval_split="test", eval_batches=0)
    # root_depth: 'gt' (ground-truth wrist depths) or 'rootnet' (InterHand2.6M's RootNet depths, DIGIT's release)
    c.eval = dict(split="test", batch_size=64, checkpoint="", root_depth="gt")
    # python -m handjax.predict: no intrinsics / root depth on photos: focal = predict.focal x crop side,
    # right wrist at predict.root_depth metres
    c.predict = dict(focal=1.0, root_depth=0.6)

    if a.recipe == "paper":  # HRNet-W32 at 256 on InterHand2.6M 5fps v1.0 (H+M), as upstream
        c.data.name = "interhand"
        c.data.builder_config = "5fps_hm"
        c.data.image_size = 256
        # upstream: scale 0.75-1.25, rotation +-90 deg (p 0.6), translation +-15 %, flip 0.5, colour gain 0.8-1.2
        c.data.augment = dict(scale=0.25, rotation=90.0, shift=0.15, flip="random", brightness=0.2, contrast=0.0,
                              saturation=0.0, hue=0.0, bbox_pad=1.25)
        c.model.backbone = "hrnet_w32"
        c.model.backbone_kw = {}
        c.model.spec = dict(PAPER_SPEC)
        c.model.backbone_init = "hrnet"
        c.model.conv_impl = "auto"  # Winograd 3x3 on CPU (a long compile, faster steps), XLA's elsewhere
        steps = 50 * 1_000_000 // 64  # ~50 epochs of the 5fps train split at batch 64 (set to your split's size)
        c.train.update(num_steps=steps, batch_size=64, micro_batches=2, log_every=100, checkpoint_every=5000,
                       summary_every=5000)
        c.train.optim = _step_schedule(1e-4, steps)
        c.eval.update(split="test", batch_size=16, root_depth="rootnet")
    if a.size == "tiny":
        c.data.builder_config = "tiny"
        c.data.image_size = 32
        c.model.backbone = "hrnet_w18_small"
        c.model.backbone_kw = dict(width=4, layer1_planes=4, layer1_blocks=1, stages=((1, 1), (1, 1), (1, 1)))
        c.model.spec = dict(TINY_SPEC)
        c.model.conv_impl = "xla"  # XLA-CPU compiles Winograd graphs slowly; seconds matter here, not speed
        c.train.update(num_steps=4, batch_size=8, log_every=2, checkpoint_every=2, summary_every=4)
        c.train.optim = _step_schedule(1e-3, 4)
        c.eval.batch_size = 8
    return c
