"""Config checks every system shares, run before any stage (``System.check``).

* :func:`require_real_mano`: a real dataset (labels made with the real MANO model) meeting the
  built-in hand (``mano.model_path`` empty) is an error unless ``mano.allow_builtin``: every loss
  and metric would silently be computed with another hand model.
* :func:`require_video`: stages that draw several frames of a sequence need a video dataset.
"""
from __future__ import annotations

from typing import Mapping, Sequence

MANO_REQUIRED = (
    "set config key mano.model_path to your MANO_RIGHT.pkl (or the folder holding it): register at "
    "https://mano.is.tue.mpg.de, download 'Models & Code' (mano_v1_2.zip), use mano_v1_2/models/MANO_RIGHT.pkl; "
    "or set mano.allow_builtin=True to run this experiment with the built-in hand anyway (its numbers are then not "
    "comparable to published ones)")


def job_stages(cfg) -> tuple:
    """The stage names listed in ``cfg.stages``."""
    return tuple(x.strip() for x in str(cfg.stages).split(",") if x.strip())


def builtin_hand_allowed(cfg) -> bool:
    """A MANO file is configured, or the user opted into the built-in hand."""
    return bool(cfg.mano.get("model_path") or cfg.mano.get("allow_builtin", False))


def _dataset(name: str):
    from data_pipelines.factory import get_dataset

    return get_dataset(name)


def dataset_names(data_cfg: Mapping) -> list:
    """``data.name`` and the names of a ``data.mixture``'s members."""
    names = [data_cfg.get("name")] + [e[0] if isinstance(e, (tuple, list)) else e.get("name")
                                      for e in (data_cfg.get("mixture") or [])]
    return [n for n in names if n]


def _stage_data(cfg, stage: str) -> dict:
    from handjax.train.runner import stage_data_config

    return stage_data_config(cfg, stage) if cfg.get(stage) is not None else cfg.data.to_dict()


def require_real_mano(cfg, stages: Sequence[str]) -> None:
    """The listed stages (those that use the hand model) of the job may not read a real dataset with the built-in hand."""
    if builtin_hand_allowed(cfg):
        return
    job = job_stages(cfg)
    for stage in stages:
        if stage not in job:
            continue
        for name in dataset_names(_stage_data(cfg, stage)):
            if _dataset(name).manual:
                raise ValueError(f"stage {stage!r} uses the real dataset {name!r} (config key data.name), but "
                                 f"mano.model_path is empty: its labels were made with the real MANO model, the "
                                 f"built-in hand would give meaningless losses and metrics: {MANO_REQUIRED}")


def require_video(cfg, needs: Mapping[str, str], hint: str = "") -> None:
    """``needs``: stage -> why it needs video; a listed stage of the job on a single-frame dataset is an error
    naming the config key (``hint`` may use ``{stage}``)."""
    job = job_stages(cfg)
    for stage, why in needs.items():
        if stage not in job:
            continue
        data_cfg = _stage_data(cfg, stage)
        name = data_cfg.get("name") or ""
        if name and not _dataset(name).video:
            own = (cfg.get(stage).get("data") or {}).get("name") if cfg.get(stage) is not None else None
            key = f"{stage}.data.name" if own else "data.name"
            raise ValueError(f"config key {key}={name!r}: a single-frame dataset, but {why} (with single frames "
                             f"every positive is the anchor itself and nothing is learned); use a video dataset"
                             + (f", {hint.format(stage=stage)}" if hint else ""))
