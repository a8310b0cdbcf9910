"""Evaluation metrics and protocols."""
from handjax.eval.metrics import (
    MetricAccumulator,
    auc,
    f_score,
    hand_metrics,
    mpjpe,
    pa_mpjpe,
    pck_curve,
    summarize,
)
