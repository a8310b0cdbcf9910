r"""Evaluate a TempCLR checkpoint on FreiHAND's evaluation set (3,960 images, public ground truth).

Prints PA-MPJPE / PA-MPVPE / F@5mm / F@15mm / AUC (``handjax.eval.protocols``) and writes the
CodaLab ``pred.json`` (``eval.pred_json``, default ``<workdir>/pred.json``):

  python -m data_pipelines.freihand.build --manual_dir /data/FreiHAND_pub_v2 --data_dir /data/tfds
  python -m handjax.main --config configs/eval_freihand.py --workdir /tmp/eval_freihand \
      --config.eval.checkpoint=/runs/tempclr_freihand/finetune --config.data.data_dir=/data/tfds \
      --config.mano.model_path=mano_v1_2/models/MANO_RIGHT.pkl

``mano.model_path`` (your MANO_RIGHT.pkl, https://mano.is.tue.mpg.de) is required: FreiHAND's
labels and every released TempCLR model were made with the real MANO model, so evaluating
with the built-in hand is an error (``--config.mano.allow_builtin=True`` forces it for
experiments; the numbers are then not comparable to published ones).

``eval.checkpoint``: a training workdir's ``finetune`` directory or a model-only checkpoint
(``handjax.models.checkpoint.save_model``, e.g. a converted TempCLR release). The model is
TempCLR's FreiHAND model: ResNet-50, MLP 1024-1024, 3 stages, 256x256 input made from the
whole 224x224 image. ``data.manual_dir`` builds the dataset first if it is not built yet.

Arguments (``configs/eval_freihand.py:key=value``): size=default|tiny (tiny: ResNet-18,
32x32 crops, MLP 64-64, for tests on fixtures).
"""
from handjax.config_utils import parse_arg
from handjax.configs import tempclr


def get_config(arg=None):
    a = parse_arg(arg, choices=dict(size=("default", "tiny")), size="default")
    c = tempclr.get_config("recipe=freihand")
    c.stages = "eval"
    c.data.builder_config = "default"
    c.data.manual_dir = ""  # raw download: built into data_dir if the dataset is not built yet
    c.data.eval_crop = dict(crop_from="image", bbox_pad=1.0)  # TempCLR: whole 224 image -> 256
    c.model.backbone = "resnet50"
    c.model.hidden = (1024, 1024)
    c.eval = dict(split="evaluation", batch_size=32, checkpoint="", protocol="freihand", pred_json="")
    if a.size == "tiny":
        c.model.backbone = "resnet18"
        c.model.hidden = (64, 64)
        c.model.projection = (64, 32)
        c.data.image_size = 32
        c.eval.batch_size = 8
    return c
