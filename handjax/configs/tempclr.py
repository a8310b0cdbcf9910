"""TempCLR's configs as an importable function (``configs/tempclr.py`` and the evaluation configs build on it)."""
import ml_collections

from handjax.config_utils import optim, parse_arg

# ExPose's definitions of the fine-tuning terms (handjax.losses.terms "expose_*"): keypoint L1 sums, similarity-
# aligned vertex L1 sum, geodesic rotation angles, betas squared sum, each per sample / the batch. ExPose's hand
# defaults weight the 2D joints, the wrist and the finger rotations 1 (losses/loss_defaults.py); TempCLR's training
# weights are not published, so the 3D joints, vertices and betas FreiHAND / HO3D carry are switched on at 1 too.
EXPOSE_WEIGHTS = dict(expose_joints2d=1.0, expose_joints3d=1.0, expose_vertices=1.0, expose_wrist_pose=1.0,
                      expose_hand_pose=1.0, expose_betas=1.0)
# upstream crops, for training as for evaluation (tempclr.md 4.2 / 4.3)
RECIPE_CROPS = {"freihand": dict(crop_from="image", bbox_pad=1.0),  # the whole 224 image
                "ho3d": dict(crop_from="bbox", bbox_pad=2.0)}      # square of 2 x the hand box's longer side


def get_config(arg=None):
    """TempCLR's config (``configs/tempclr.py`` documents the arguments)."""
    a = parse_arg(arg, recipe="default", pretrain=True, size="default",
                  choices=dict(recipe=("default", "freihand", "ho3d"), size=("default", "tiny")))
    c = ml_collections.ConfigDict()
    c.system = "tempclr"
    c.seed = 0
    c.stages = "pretrain,finetune,eval" if a.pretrain else "finetune,eval"  # comma-separated
    # model_path empty: the built-in licence-free hand model. A converted TempCLR release or a real dataset with it
    # is an error unless allow_builtin=True (an explicit opt-in for experiments).
    c.mano = dict(model_path="", allow_builtin=False)

    c.data = dict(name="synthetic_hands", builder_config="default", data_dir="", image_size=32,
                  joint_convention="freihand", num_workers=0, window=4, extra_negatives=0,
                  train_fraction=1.0, val_seed=0,  # < 1: hold out a 'val' split (data_pipelines.factory)
                  augment=dict(scale=0.2, rotation=30.0, shift=0.1, flip="left_to_right", brightness=0.4,
                               contrast=0.4, saturation=0.4, hue=0.05))
    c.data.mano_model = c.mano.get_ref("model_path") + ""  # default: mano.model_path (overriding it decouples)
    # camera_scale: x0's weak-perspective scale; ~2 / crop side in metres (TempCLR's 0.9 is replaced by a
    # released checkpoint's mean_param, but training from scratch needs a hand-sized start).
    # conv_impl: 3x3 / stride-1 convolutions as "winograd", "xla", or "auto" (Winograd on CPU, XLA on GPU/TPU)
    c.model = dict(backbone="resnet18", num_stages=3, hidden=(1024, 1024), projection=(512, 128), bf16=False,
                   camera_scale=8.0, conv_impl="auto")
    common = dict(log_every=50, checkpoint_every=200, keep_checkpoints=2, summary_every=0)
    # data: this stage's own data keys on top of `data` (empty = inherit), e.g. a video dataset to pretrain on
    stage_data = dict(name="", builder_config="", data_dir="", manual_dir="")
    # Sized for ~15 minutes on 2 CPU cores including data generation (a pretrain step sees 2 x batch_size crops);
    # measured ~11 min (pretrain 4.7 step/s, fine-tune 3.9 step/s with Winograd convolutions on CPU).
    # init_from: a converted torchvision ResNet (`python -m handjax.convert torchvision-resnet`) starts from ImageNet
    c.pretrain = dict(num_steps=400, batch_size=16, temperature=0.5, equivariance=False, init_from="",
                      data=dict(stage_data), optim=optim(1e-3, 20, weight_decay=1e-6, name="adamw"), **common)
    # lr 1e-4 as TempCLR: with 1e-3 Adam inflates the (scale-free) 6D outputs and drifts the betas.
    # The built-in default keeps its tuned mean-reduced terms (handjax.losses.terms); the paper recipes use ExPose's.
    # temporal_pose / temporal_shape (TempCLR's temporal_consistency pose_w / shape_w) need a video dataset; with
    # either weighted the stage samples `temporal_window` windows (anchor + k-1 frames within `window`).
    c.finetune = dict(num_steps=1800, batch_size=32, init_from="", data=dict(stage_data),
                      loss_weights=dict(joints2d=1.0, joints3d=10.0, vertices=10.0, wrist_pose=1.0, hand_pose=1.0,
                                        betas=0.1),
                      temporal_window=dict(k=2, window=1), eval_every=0, eval_split="val", eval_batches=0,
                      optim=optim(1e-4, 50), **dict(common, summary_every=500))
    c.eval = dict(split="test", batch_size=64, checkpoint="")  # real datasets: "evaluation"

    if a.recipe != "default":  # paper scale (real datasets, GPU/TPU)
        c.model.backbone = "resnet50" if a.recipe == "freihand" else "resnet18"
        c.data.name = a.recipe
        c.data.image_size = 256
        c.data.joint_convention = "freihand" if a.recipe == "freihand" else "ho3d"
        c.data.augment.update(RECIPE_CROPS[a.recipe])  # training crops = evaluation crops, as upstream
        c.data.eval_crop = dict(RECIPE_CROPS[a.recipe])
        c.data.train_fraction = 0.8  # upstream: train on 80 %, validate on the rest
        c.eval.split = "evaluation"
        c.pretrain.update(num_steps=100_000, batch_size=128, log_every=100, checkpoint_every=5000)
        c.pretrain.optim = optim(1e-4, 5000, name="lars", weight_decay=1e-6)
        if a.recipe == "freihand":  # FreiHAND has single frames: pretrain on HanCo, its authors' multi-view videos
            c.pretrain.data.update(name="hanco", builder_config="default")
            c.pretrain.data.train_fraction = 1.0
        c.finetune.update(num_steps=100_000, batch_size=64, log_every=100, checkpoint_every=5000, eval_every=5000)
        c.finetune.loss_weights = dict(EXPOSE_WEIGHTS, temporal_pose=0.0, temporal_shape=0.0)
        c.finetune.optim = optim(1e-4, 1000)
    if a.size == "tiny":
        c.data.builder_config = "tiny"
        c.data.image_size = 32
        c.model.hidden = (64, 64)
        c.model.projection = (64, 32)
        for stage in (c.pretrain, c.finetune):
            stage.update(num_steps=4, batch_size=8, log_every=2, checkpoint_every=2)
        c.finetune.summary_every = 4
        c.eval.batch_size = 8
    return c
