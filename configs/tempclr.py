r"""TempCLR: time-coherent contrastive pretraining, supervised fine-tuning, evaluation.

Default: the whole recipe on the built-in synthetic hand videos, sized for a
2-core CPU (about 15 minutes including data generation; 32x32 crops so that a
ResNet-18 trained from scratch gets enough steps to learn):

  python -m handjax.main --config configs/tempclr.py --workdir /tmp/tempclr

Arguments (``configs/tempclr.py:key=value,...``):
  recipe=default|freihand|ho3d  paper scale: ResNet-50 (FreiHAND) or ResNet-18 (HO3D), 256x256 crops
  pretrain=true|false           false: fine-tune from scratch (the no-pretraining baseline)
  size=default|tiny             tiny: seconds-long smoke run (tests)
Any key can be overridden, e.g. ``--config.finetune.num_steps=2000``.
"""
from handjax.configs.tempclr import get_config  # noqa: F401 (the config lives in an importable module)
