r"""Evaluate a TempCLR checkpoint on HO-3D's evaluation split (v2 or v3) and write the CodaLab pred.json.

With the released evaluation ground truth in the meta files it also prints PA-MPJPE /
PA-MPVPE / F@5mm / F@15mm / AUC (``handjax.eval.protocols``; vertex metrics need a dataset
built with ``--mano_model``); without it the metrics are n/a and only ``pred.json`` is
written (``eval.pred_json``, default ``<workdir>/pred.json``: HO3D joint order, OpenGL axes,
the order of ``evaluation.txt``):

  python -m data_pipelines.ho3d.build --manual_dir /data/HO3D_v2 --data_dir /data/tfds --config v2
  python -m handjax.main --config configs/eval_ho3d.py:version=v2 --workdir /tmp/eval_ho3d \
      --config.eval.checkpoint=/runs/tempclr_ho3d/finetune --config.data.data_dir=/data/tfds \
      --config.mano.model_path=mano_v1_2/models/MANO_RIGHT.pkl

``mano.model_path`` (your MANO_RIGHT.pkl, https://mano.is.tue.mpg.de) is required, as for
FreiHAND (``--config.mano.allow_builtin=True`` forces the built-in hand for experiments).
``data.mano_model`` defaults to it (used when the dataset is built: GT vertices).

``eval.checkpoint``: a training workdir's ``finetune`` directory or a model-only checkpoint
(``handjax.models.checkpoint.save_model``). The model is TempCLR's HO3D model: ResNet-18,
MLP 1024-1024, 3 stages, 256x256 crops of side 2 x the longer side of ``handBoundingBox``.

Arguments (``configs/eval_ho3d.py:key=value,...``): version=v2|v3; size=default|tiny (tiny:
32x32 crops, MLP 64-64, for tests on fixtures).
"""
from handjax.config_utils import parse_arg
from handjax.configs import tempclr


def get_config(arg=None):
    a = parse_arg(arg, choices=dict(version=("v2", "v3"), size=("default", "tiny")), version="v2", size="default")
    c = tempclr.get_config("recipe=ho3d")
    c.stages = "eval"
    c.data.builder_config = a.version
    c.data.manual_dir = ""  # raw download: built into data_dir if the dataset is not built yet
    c.data.eval_crop = dict(crop_from="bbox", bbox_pad=2.0)  # TempCLR: square of 2 x max(w, h) of the box
    c.model.backbone = "resnet18"
    c.model.hidden = (1024, 1024)
    c.eval = dict(split="evaluation", batch_size=32, checkpoint="", protocol="ho3d", pred_json="")
    if a.size == "tiny":
        c.model.hidden = (64, 64)
        c.model.projection = (64, 32)
        c.data.image_size = 32
        c.eval.batch_size = 8
    return c
