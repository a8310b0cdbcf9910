"""handobjectconsist's configs as an importable function (``configs/photometric.py`` documents the arguments)."""
import ml_collections

from handjax.config_utils import optim, parse_arg
from handjax.models.meshregnet import UPSTREAM_PLACEMENT

# upstream CLI defaults (trainmeshreg.py / trainmeshwarp.py): mano_lambda_recov_joints3d, obj_lambda_recov_verts3d,
# mano_lambda_shape, mano_lambda_pose_reg; lambda_consist 0.001 with lambda_data 0.999
UPSTREAM_WEIGHTS = dict(recov_joints3d=0.5, recov_objverts3d=0.5, mano_shape=5e-7, pose_reg=5e-6)
RECIPES = ("default", "fphab", "ho3d")


def _consist_stage(steps, batch, lr, weights, lambda_consist, lambda_data, ramp, common):
    return dict(num_steps=steps, batch_size=batch, init_from="", loss_weights=dict(weights, consist=lambda_consist),
                lambda_data=lambda_data, ramp_steps=ramp, gt_refs=True, skip_annotated_queries=True,
                pixel_center=0.5, upstream_grid=True, occlusion_threshold=0.03, optim=optim(lr, 0, "constant"),
                **common)


def get_config(arg=None):
    """handobjectconsist's config (``configs/photometric.py`` documents the arguments)."""
    a = parse_arg(arg, recipe="default", size="default", control=True,
                  choices=dict(recipe=RECIPES, size=("default", "tiny")))
    c = ml_collections.ConfigDict()
    c.system = "photometric"
    c.seed = 0
    c.stages = "supervised,control,consistency,eval" if a.control else "supervised,consistency,eval"
    c.mano = dict(model_path="", allow_builtin=False)
    # whole frames (crop = the image), no spatial jitter, colour jitter shared by the two frames of a pair
    # object_models: the real datasets' object-mesh folder (FPHAB Object_models/, HO3D modelsprocess/ or YCB
    # models/; empty: the default under manual_dir), see data_pipelines/object_models.py
    c.data = dict(name="hand_object", builder_config="default", data_dir="", manual_dir="", object_models="",
                  mano_model="", image_size=64,
                  joint_convention="freihand", num_workers=0,
                  augment=dict(crop_from="image", bbox_pad=1.0, scale=0.0, rotation=0.0, shift=0.0, flip="none",
                               brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05))
    # fraction: labels kept on this fraction of the annotated training frames (upstream --fraction; the built-in
    # videos annotate every 4th frame, so 0.1 labels ~3 % of the frames); max_distance: pair queries at most this
    # many frames from their reference (-1: any; upstream's are <= ~80 frames away by construction); fraction_seed:
    # the labelled frames' draw (-1: the run's seed)
    c.sparse = dict(fraction=0.1, fraction_seed=-1, max_distance=-1)
    # fhb_adaptor: the model has FPHAB's frozen skeleton adaptor (values from a restored checkpoint);
    # fphab_adaptor: upstream's assets/mano/fhb_skel_centeridx9.pkl to fill it from (implies the adaptor)
    # placement factors: upstream's (100 px, 1e-4, 0.4 m) are for 480x270 frames with f ~ 349 px and hands at
    # 0.3-0.7 m; the built-in 64x64 frames (f ~ 35-45 px, depths 0.3-0.9 m) get factors of the same reach
    c.model = dict(backbone="resnet18", ncomps=15, mano_neurons=(512, 512), use_shape=True, input_norm="mean0.5",
                   tips="freihand", trans_factor=20.0, scale_factor=0.005, depth_offset=0.55, freeze_bn=False,
                   conv_impl="auto", fhb_adaptor=False, fphab_adaptor="")
    common = dict(log_every=25, checkpoint_every=200, keep_checkpoints=2, summary_every=0)
    c.supervised = dict(num_steps=600, batch_size=16, init_from="", loss_weights=dict(UPSTREAM_WEIGHTS),
                        optim=optim(5e-4, 30), **common)
    # control = the same continued training without the warping term (upstream: --lambda_data 1 --lambda_consist 0)
    c.control = _consist_stage(250, 8, 1e-4, UPSTREAM_WEIGHTS, 0.0, 1.0, 0, common)
    c.consistency = _consist_stage(250, 8, 1e-4, UPSTREAM_WEIGHTS, 1e-3, 0.999, 50, common)
    c.eval = dict(split="test", batch_size=32, checkpoint="")
    # python -m handjax.predict: the crop camera's focal length (network-input pixels; 0 = the input side) and the
    # known object placed in every frame
    c.predict = dict(focal_length=0.0, object_id=0)

    if a.recipe != "default":  # upstream sizes and data (GPU/TPU); object meshes from data.object_models
        c.data.name = a.recipe
        c.data.builder_config = "hand_object_480" if a.recipe == "fphab" else "v2"
        c.data.image_size = 480 if a.recipe == "fphab" else 640
        c.data.joint_convention = "manopth" if a.recipe == "fphab" else "ho3d"
        c.data.augment.update(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.15)
        c.sparse.fraction = 0.00625
        c.sparse.max_distance = 80
        c.model.update(tips="manopth", freeze_bn=True, fhb_adaptor=a.recipe == "fphab", **UPSTREAM_PLACEMENT)
        c.supervised.update(num_steps=200_000, batch_size=8, log_every=100, checkpoint_every=5000)
        c.supervised.optim = optim(5e-5, 0, "constant")
        for stage in (c.control, c.consistency):
            stage.update(num_steps=200_000, batch_size=8, log_every=100, checkpoint_every=5000, ramp_steps=1000)
            stage.optim = optim(5e-5, 0, "constant")
        c.eval.split = "test" if a.recipe == "fphab" else "evaluation"  # HO3D's splits: train / evaluation
    if a.size == "tiny":
        c.data.builder_config = "tiny"
        c.data.image_size = 32  # the tiny 64x64 frames, whole, at half resolution
        c.model.mano_neurons = (64, 64)
        c.supervised.update(num_steps=2, batch_size=8, log_every=1, checkpoint_every=2)
        for stage in (c.control, c.consistency):
            stage.update(num_steps=2, batch_size=8, log_every=1, checkpoint_every=2, ramp_steps=1)
        c.eval.batch_size = 8
    return c
