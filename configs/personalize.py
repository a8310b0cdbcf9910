r"""IdHandMesh: identity-aware hand mesh estimation and personalisation (ECCV 2022).

Default: every stage on the built-in ``identities`` scenes (disjoint train / test subjects with fixed
shapes), a ResNet-18 at 32x32, sized for a 2-core CPU:

  python -m handjax.main --config configs/personalize.py --workdir /tmp/personalize

Stages: baseline -> confidence -> identity -> calibrate -> optimize -> eval (``--config.stages``).
Prints the table (trivial baseline, anonymous baseline, identity-aware with GT / calibrated betas by
mean / confidence-weighted / top-k, each with and without the inference-time optimisation) and writes
``calibration_curve.png`` (calibrated-shape error and MPVPE against N).

Arguments (``configs/personalize.py:key=value,...``):
  recipe=default|dexycb  dexycb: upstream sizes (ResNet-50, 224 crops, 16 epochs, lr 1e-4 -> 1e-5 -> 1e-6)
  size=default|tiny      tiny: seconds-long smoke run (tests)
"""
from handjax.configs.personalize import get_config  # noqa: F401
