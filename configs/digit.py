r"""DIGIT: HRNet + probabilistic per-pixel part segmentation fused into 2.5D two-hand keypoints.

Default: trained from scratch on the built-in two-hand scenes (square crops around both hands),
a narrow HRNet and head at 64x64, sized for a 2-core CPU (1500 steps at ~2.4 step/s plus ~2 minutes to compile the
train step; README "DIGIT" has the measured table), then evaluated with DIGIT's InterHand2.6M rules next to the
trivial baselines:

  python -m handjax.main --config configs/digit.py --workdir /tmp/digit

Arguments (``configs/digit.py:key=value,...``):
  recipe=default|paper  paper: HRNet-W32 + upstream head at 256x256 on InterHand2.6M 5fps (H+M),
                        Adam 1e-4 x0.1 at 80 %, batch 64 = 2 micro-batches of 32, RootNet depths
  size=default|tiny     tiny: seconds-long smoke run (tests)
Any key can be overridden, e.g. ``--config.train.num_steps=3000``. Evaluate a converted release:
  python -m handjax.main --config configs/digit.py:recipe=paper --config.stages=eval \
      --config.eval.checkpoint=ckpt/digit --config.data.data_dir=OUT --workdir /tmp/digit_eval
"""
from handjax.configs.digit import get_config  # noqa: F401 (the config lives in an importable module)
