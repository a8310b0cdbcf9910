r"""handobjectconsist (Hasson et al., CVPR 2020): sparse supervision, then photometric consistency over time.

Default: the built-in hand + object videos (64x64 whole frames, every 4th frame annotated), labels kept on
``sparse.fraction`` = 0.1 of the annotated training frames; stages ``supervised`` (labelled frames) ->
``control`` (continued on [query, nearest labelled frame] pairs without the warping term) and
``consistency`` (the same with it) -> ``eval`` (hand joint EPE, centred EPE, AUCs, object vertex error
for the three models and a trivial baseline):

  python -m handjax.main --config configs/photometric.py --workdir /tmp/photometric

Arguments (``configs/photometric.py:key=value,...``):
  recipe=default|fphab|ho3d  upstream sizes (whole 480x270 / 640x480 frames, ResNet-18 with frozen BN,
                             upstream's factors and schedule) on the real datasets
  control=true|false         false: skip the control stage (lambda_consist = 0)
  size=default|tiny          tiny: seconds-long smoke run (tests)
The control as a flag: ``--config.consistency.loss_weights.consist=0 --config.consistency.lambda_data=1``.

Real data: ``--config.data.manual_dir=RAW`` (built into ``data.data_dir`` on first use), ``mano.model_path``, the
object meshes' folder ``data.object_models`` (default ``RAW/Object_models`` for FPHAB, ``RAW/modelsprocess`` for
HO3D) and, for FPHAB from scratch, ``model.fphab_adaptor=.../fhb_skel_centeridx9.pkl``:

  python -m handjax.main --config configs/photometric.py:recipe=fphab --workdir /tmp/hoc_fphab \
      --config.data.manual_dir=RAW --config.mano.model_path=MANO_RIGHT.pkl \
      --config.model.fphab_adaptor=fhb_skel_centeridx9.pkl
"""
from handjax.configs.photometric import get_config  # noqa: F401 (the config lives in an importable module)
