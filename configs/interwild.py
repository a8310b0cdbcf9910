r"""InterWild (CVPR 2023): two interacting hands from a person crop -- hand boxes, shared-domain
hand crops (the left one mirrored), 2.5D joints + MANO per hand, and the relative translation
from Gaussian heatmaps of both hands' joints.

Default: the built-in two-hand person-crop scenes (the `hires` build, 256x192; the body branch sees
them at 128x96) with ResNet-18 branches, 64 px hand crops and 16^3 TransNet heatmaps, 700 steps,
sized for a 2-core CPU (17.7 minutes in the measured run, ~13 at a faster run's step rate; README
"InterWild" has the table and why):

  python -m handjax.main --config configs/interwild.py --workdir /tmp/interwild

Arguments (``configs/interwild.py:key=value,...``):
  recipe=default|paper   paper: upstream sizes (512x384 crops, ResNet-50 body / hand branches, 256 px
                         hand crops, 64^3 heatmaps) on InterHand2.6M + COCO-WholeBody mixed 50/50
  size=default|tiny      tiny: seconds-long smoke run (tests)
Any key can be overridden, e.g. ``--config.train.num_steps=2000``.
"""
from handjax.configs.interwild import get_config  # noqa: F401 (the config lives in an importable module)
