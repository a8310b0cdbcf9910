"""IdHandMesh personalisation configs as an importable function (``configs/personalize.py`` documents them)."""
import ml_collections

from handjax.config_utils import optim, parse_arg

BASELINE_WEIGHTS = dict(vertices=1.0, normal=0.1, edge=1.0, pose6d=1.0, betas=1.0, heatmaps=1.0)  # upstream + 2D
IDENTITY_WEIGHTS = dict(vertices=1.0, normal=0.1, edge=1.0, pose6d=1.0)  # betas are the input
CONFIDENCE_WEIGHTS = dict(ranking=1.0)  # the conf stage's loss is the ranking loss only (conf_weight_scalar 1)


def get_config(arg=None):
    a = parse_arg(arg, recipe="default", size="default",
                  choices=dict(recipe=("default", "dexycb"), size=("default", "tiny")))
    c = ml_collections.ConfigDict()
    c.system = "personalize"
    c.seed = 0
    c.stages = "baseline,confidence,identity,calibrate,optimize,eval"
    c.mano = dict(model_path="", allow_builtin=False)
    c.data = dict(name="identities", builder_config="default", data_dir="", image_size=32,
                  joint_convention="manopth", num_workers=0,
                  augment=dict(scale=0.1, rotation=0.0, shift=0.05, flip="none", brightness=0.3, contrast=0.3,
                               saturation=0.3, hue=0.05))
    c.data.mano_model = c.mano.get_ref("model_path") + ""
    # feature_dim: upstream keeps the ImageNet fc (1000); heatmap_sigma in heatmap cells (S/2 resolution)
    c.model = dict(backbone="resnet18", feature_dim=256, iterations=3, pose_hidden=(512, 256, 128),
                   shape_hidden=(512, 256, 128), heatmap_sigma=1.0, conv_impl="auto")
    common = dict(log_every=50, checkpoint_every=500, keep_checkpoints=2, summary_every=0)
    c.baseline = dict(num_steps=1200, batch_size=32, loss_weights=dict(BASELINE_WEIGHTS), optim=optim(1e-3, 50),
                      **common)
    # upstream: batch 128 (all C(128, 2) pairs), margin 1; trains only the branch
    c.confidence = dict(num_steps=300, batch_size=64, margin=1.0, loss_weights=dict(CONFIDENCE_WEIGHTS),
                        optim=optim(1e-3, 10), init_from="", **common)
    c.identity = dict(num_steps=1200, batch_size=32, loss_weights=dict(IDENTITY_WEIGHTS), optim=optim(1e-3, 50),
                      **common)
    # calibration: num_images per subject (the released eval path: 20 random); the curve over N (1..50)
    c.calibrate = dict(batch_size=64, split="test", num_images=20, methods=("mean", "confidence", "topk"),
                       temperature=1.0, top_fraction=0.5, curve_n=(1, 2, 3, 5, 10, 20, 35, 50), curve_repeats=10)
    # upstream: wrist at 0.85 m, Adam 1e-2 x 200 (translation), then 1e-3 x 100 (translation + 6D pose)
    c.optimize = dict(init_depth=0.85, lr1=1e-2, steps1=200, lr2=1e-3, steps2=100, keypoints="argmax")
    c.eval = dict()
    # python -m handjax.predict --checkpoint RUN/baseline: subject_shape = JSON {"betas": [...]} (else per-image
    # betas); crop_focal: the pinhole crop camera's focal in crop pixels (0: 5.6 x image_size, the built-in crops')
    c.predict = dict(subject_shape="", crop_focal=0.0)
    if a.recipe == "dexycb":  # upstream scale (GPU): ResNet-50, 224 crops, 16 epochs, lr 1e-4 -> 1e-5 -> 1e-6
        c.data.update(name="dexycb", builder_config="s1", image_size=224)
        # upstream drops left-hand sequences; the factory has no side filter, so left hands are mirrored into
        # right ones instead (train and test), and images are ImageNet-normalised, not (x / 255 - 0.5) / 0.5
        c.data.augment.update(scale=0.0, shift=0.0, crop_from="bbox", bbox_pad=2.0, flip="left_to_right")
        c.data.eval_crop = dict(crop_from="bbox", bbox_pad=2.0)
        c.model.update(backbone="resnet50", feature_dim=1000, heatmap_sigma=1.75)
        steps_per_epoch = 4000  # ~ s1 train right-hand frames / 32; set from the built split
        for stage, batch in ((c.baseline, 32), (c.confidence, 128), (c.identity, 32)):
            stage.update(batch_size=batch, num_steps=16 * steps_per_epoch, log_every=100, checkpoint_every=5000)
            stage.optim = optim(1e-4, 0, schedule="step")
            stage.optim.decay_steps = (5 * steps_per_epoch, 10 * steps_per_epoch)
        c.calibrate.batch_size = 32
    if a.size == "tiny":
        c.data.builder_config = "tiny"
        c.data.image_size = 32
        c.model.update(feature_dim=32, pose_hidden=(32,), shape_hidden=(32,))
        for stage in (c.baseline, c.confidence, c.identity):
            stage.update(num_steps=2, batch_size=8, log_every=1, checkpoint_every=2)
        c.calibrate.update(batch_size=8, num_images=3, curve_n=(1, 2, 4), curve_repeats=2)
        c.optimize.update(steps1=5, steps2=3)
    return c
