"""The stage runner: runs the stages of any system (``handjax.train.system``).

``run(system, cfg, workdir, data)``:

1. checks the whole job before any stage runs: the ``stages`` list (names, known to the
   system), every stage's ``loss_weights`` against its loss terms, every ``init_from`` /
   evaluation checkpoint (present), every batch size against the device mesh;
2. runs the listed stages in the system's order, each in ``<workdir>/<stage>``: a training
   stage builds its task, initialises from ``cfg.<stage>.init_from`` or from the final
   checkpoint of its declared predecessor when that ran in this job, and trains (resuming
   from its own checkpoints) on the job's data or, with ``<stage>.data`` set, on
   ``cfg.data`` updated by those keys (:func:`stage_data_config`); an evaluation stage
   evaluates the trained (or restored) model and the system's trivial baselines, prints the
   table, writes ``eval_metrics.json`` (and the system's extra files, e.g. pred.json); any other
   stage (``system.Stage``) runs its ``run(ctx, models)`` in its folder;
3. returns ``{stage: metrics}`` (``handjax.main`` writes it to ``results.json``).
"""
from __future__ import annotations

import json
import os
from typing import Dict

import jax
from etils import epath

from handjax.eval.loop import evaluate
from handjax.losses.terms import check_weights
from handjax.models.checkpoint import is_model_checkpoint, resolve_path
from handjax.sharding import make_mesh
from handjax.train.loop import Task, restore_model, train
from handjax.train.system import EvalStage, Stage, StageContext, System, TrainStage


def parse_stages(system: System, spec: str) -> tuple:
    """``cfg.stages`` ("a,b,c") -> stage names in the system's order; unknown names are errors."""
    listed = [x.strip() for x in str(spec).split(",") if x.strip()]
    unknown = [x for x in listed if x not in system.stage_names]
    if unknown or not listed:
        raise ValueError(f"config key 'stages': unknown stage(s) {unknown} " if unknown else
                         "config key 'stages' is empty; " f"use a comma-separated subset of "
                         f"{', '.join(system.stage_names)}")
    return tuple(s for s in system.stage_names if s in listed)


def _stage_seed(system: System, cfg, name: str) -> int:
    """Stage i of the declaration (not of the job) gets seed ``cfg.seed + i``, with or without earlier
    stages; a training stage with ``seed_from`` takes that stage's."""
    source = getattr(system.stage(name), "seed_from", "") or name  # checked by System
    return int(cfg.seed) + system.stage_names.index(source)


def stage_data_config(cfg, name: str) -> dict:
    """The data config of stage ``name``: ``cfg.data`` with the stage's own ``<name>.data`` keys on top
    (e.g. ``pretrain.data.name='hanco'``: contrastive pretraining on another, video, dataset; keys
    left empty inherit)."""
    base = cfg.data.to_dict() if hasattr(cfg.data, "to_dict") else dict(cfg.data)
    return dict(base, **_own_data(cfg, name))


def _own_data(cfg, name: str) -> dict:
    """The keys of ``<name>.data`` that are set (empty strings and None inherit ``cfg.data``'s)."""
    own = (cfg.get(name) or {}).get("data") or {}
    own = own.to_dict() if hasattr(own, "to_dict") else dict(own)
    return {k: v for k, v in own.items() if v is not None and v != ""}


def _stage_data(cfg, name: str, data):
    """The data factory of a stage: the job's, or one of its own when ``<name>.data`` sets keys."""
    if not _own_data(cfg, name):
        return data
    from data_pipelines.factory import make_data_factory

    return make_data_factory(stage_data_config(cfg, name), seed=int(cfg.seed))


def _context(system, cfg, name, mesh, workdir, data) -> StageContext:
    return StageContext(cfg=cfg, name=name, stage_cfg=cfg.get(name), seed=_stage_seed(system, cfg, name), mesh=mesh,
                        workdir=workdir, stage_dir=os.path.join(workdir, name), data=data)


def _checkpoint_exists(path: str) -> bool:
    path = resolve_path(path)
    return is_model_checkpoint(path) or epath.Path(path, "checkpoints").is_dir()


def _init_source(system: System, cfg, stage: TrainStage, job: tuple, workdir: str) -> str:
    explicit = (cfg.get(stage.name) or {}).get("init_from", "") or ""
    if explicit:
        return explicit
    if stage.init_from and stage.init_from in job:
        return os.path.join(workdir, stage.init_from)
    return ""


def _eval_source(cfg, stage: EvalStage, job: tuple, workdir: str) -> str:
    explicit = (cfg.get(stage.name) or {}).get("checkpoint", "") or ""
    return explicit or os.path.join(workdir, stage.model_from)


def check_job(system: System, cfg, job: tuple, workdir: str, mesh) -> None:
    """Every config error a job can have, raised before any stage runs (each names its key)."""
    n_dev = mesh.shape["data"]
    n_proc = jax.process_count()
    for name in job:
        stage = system.stage(name)
        scfg = cfg.get(name)
        if scfg is None:
            raise ValueError(f"config has no section {name!r} for stage {name!r}")
        batch = int(scfg.get("batch_size", 0))
        checked = not isinstance(stage, Stage) or "batch_size" in scfg  # a Stage may have no batches
        if checked and (batch <= 0 or batch % n_dev or batch % n_proc):
            raise ValueError(f"config key {name}.batch_size={batch}: must be a positive multiple of the "
                             f"{n_dev} devices of the mesh (and of the {n_proc} processes)")
        if isinstance(stage, TrainStage):
            check_weights(dict(scfg.get("loss_weights", {}) or {}), stage.loss_terms, f"{name}.loss_weights")
            explicit = scfg.get("init_from", "") or ""
            if explicit and not _checkpoint_exists(explicit):
                raise FileNotFoundError(f"config key {name}.init_from={explicit!r}: no checkpoint there (expected "
                                        f"a training stage folder with checkpoints/ or a model-only checkpoint)")
            if int(scfg.get("eval_every", 0) or 0) and not _validation_stage(system):
                raise ValueError(f"config key {name}.eval_every: system {system.name!r} has no evaluation stage")
        elif isinstance(stage, Stage):
            for need in stage.requires:
                if need not in job and not epath.Path(workdir, need).exists():
                    raise FileNotFoundError(f"config key stages: stage {name!r} needs the output of {need!r}, which "
                                            f"is not in 'stages', and {os.path.join(workdir, need)!r} does not exist")
        else:
            source = _eval_source(cfg, stage, job, workdir)
            if stage.model_from not in job and not _checkpoint_exists(source):
                key = f"{name}.checkpoint"
                raise FileNotFoundError(f"config key {key}: stage {name!r} evaluates {stage.model_from!r}, which "
                                        f"is not in 'stages', and there is no checkpoint at {source!r}; set {key}")
    if system.check is not None:
        system.check(cfg)


def _validation_stage(system: System):
    return next((s for s in system.stages if isinstance(s, EvalStage)), None)


def _validation_fn(system: System, ctx: StageContext):
    """``model -> metrics`` on ``cfg.<stage>.eval_split`` (first ``eval_batches`` batches), or None."""
    every = int(ctx.stage_cfg.get("eval_every", 0) or 0)
    ev_stage = _validation_stage(system)
    if not every or ev_stage is None:
        return None
    ev_ctx = _context(system, ctx.cfg, ev_stage.name, ctx.mesh, ctx.workdir, ctx.data)
    predict = ev_stage.predict(ev_ctx)
    split = ctx.stage_cfg.get("eval_split", "test")
    batch = int(ctx.cfg.get(ev_stage.name).batch_size)
    max_batches = int(ctx.stage_cfg.get("eval_batches", 0) or 0) or None

    def validate(model):
        batches = ctx.data(split=split, mode="frame", batch_size=batch, train=False, seed=0)
        out = evaluate(predict, model, batches, ctx.mesh, ev_stage.evaluator(ev_ctx), max_batches=max_batches,
                       inputs=eval_inputs(ev_stage, ev_ctx))
        return {k: float(v) for k, v in out.items() if isinstance(v, (int, float))}

    return validate


def _run_train(system, stage: TrainStage, ctx: StageContext, job, models) -> dict:
    task: Task = stage.task(ctx)
    source = _init_source(system, ctx.cfg, stage, job, ctx.workdir)
    if source:
        message = (stage.init(ctx, task.model, source) if stage.init is not None
                   else _init_whole(task.model, source))
        if jax.process_index() == 0:
            print(f"[{stage.name}] {message}", flush=True)
    validate = _validation_fn(system, ctx)
    if validate is not None:
        task.eval_fn = validate
    metrics = train(task, _train_iter(stage, ctx), ctx.stage_cfg, ctx.stage_dir, name=stage.name, mesh=ctx.mesh,
                    seed=ctx.seed)
    models[stage.name] = task.model
    return metrics


def _init_whole(model, source: str) -> str:
    restore_model(model, source)
    return f"initialised from {source}"


def _train_iter(stage: TrainStage, ctx: StageContext):
    request = dict(stage.data(ctx) if callable(stage.data) else stage.data)
    data = _stage_data(ctx.cfg, stage.name, ctx.data)
    return data(split=ctx.stage_cfg.get("split", "train"), batch_size=int(ctx.stage_cfg.batch_size),
                train=True, seed=ctx.seed, **request)


def eval_inputs(stage: EvalStage, ctx: StageContext) -> tuple:
    """The batch keys an evaluation stage predicts from: ``stage.inputs``, or ``stage.inputs(ctx)``
    when they depend on the config (e.g. DIGIT's root depths: ground truth or RootNet)."""
    return tuple(stage.inputs(ctx) if callable(stage.inputs) else stage.inputs)


def _run_eval(system, stage: EvalStage, ctx: StageContext, job, models) -> dict:
    trained_here = stage.model_from in models
    if trained_here:
        model = models[stage.model_from]
    else:
        model = stage.model(ctx)
        restore_model(model, _eval_source(ctx.cfg, stage, job, ctx.workdir))
    scfg = ctx.stage_cfg
    make_batches = lambda: ctx.data(split=scfg.split, mode="frame", batch_size=int(scfg.batch_size), train=False,
                                    seed=0)
    rows: Dict[str, dict] = {}
    for row, baseline in stage.baselines(ctx).items():
        rows[row] = evaluate(baseline, None, make_batches(), ctx.mesh, stage.evaluator(ctx),
                             inputs=eval_inputs(stage, ctx))
    collectors = list(stage.collectors(ctx))
    rows[stage.label(ctx, trained_here)] = evaluate(stage.predict(ctx), model, make_batches(), ctx.mesh,
                                                    stage.evaluator(ctx), collectors,
                                                    inputs=eval_inputs(stage, ctx))
    if jax.process_index() == 0:
        table = stage.table(rows, ctx) if stage.table is not None else _default_table(rows)
        print(table, flush=True)
        epath.Path(ctx.workdir).mkdir(parents=True, exist_ok=True)
        with epath.Path(ctx.workdir, f"{stage.name}_metrics.json").open("w") as fh:
            json.dump(rows, fh, indent=2, default=_json_default)
    extra = stage.finish(ctx, collectors) if stage.finish is not None else None
    return rows, extra or {}


def _default_table(rows: Dict[str, dict]) -> str:
    from handjax.eval.evaluators import format_table

    cols = sorted({k for r in rows.values() for k, v in r.items() if isinstance(v, (int, float))})
    return format_table(rows, cols)


def _json_default(x):
    import numpy as np

    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    raise TypeError(f"not JSON-serialisable: {type(x)}")


def run(system: System, cfg, workdir: str, data, mesh=None) -> dict:
    """Run ``cfg.stages`` of ``system``; returns ``{stage name: metrics}``."""
    job = parse_stages(system, cfg.stages)
    mesh = mesh or make_mesh()
    workdir = resolve_path(workdir)
    check_job(system, cfg, job, workdir, mesh)
    results, models = {}, {}
    for name in job:
        stage = system.stage(name)
        ctx = _context(system, cfg, name, mesh, workdir, data)
        if isinstance(stage, TrainStage):
            results[name] = _run_train(system, stage, ctx, job, models)
        elif isinstance(stage, Stage):
            epath.Path(ctx.stage_dir).mkdir(parents=True, exist_ok=True)
            results[name] = stage.run(ctx, models)
        else:
            results[name], extra = _run_eval(system, stage, ctx, job, models)
            results.update(extra)
    return results
