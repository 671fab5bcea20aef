"""Evaluation on held-out synthetic identities and speech: lip sync, identity, seams, drift, samplers.

    from letstalk_core.evaluation import evaluate_checkpoint, format_report
    result = evaluate_checkpoint("letstalk-demo.safetensors", identities=4, seconds=4)
    print(format_report(result))

Command line: ``python -m letstalk_core evaluate --checkpoint CKPT [--sampler-table] [--json OUT]``.
The metric functions (:mod:`.metrics`) work on any frames ``[N, H, W, 3]`` in 0..1.
"""

from .metrics import (
    MouthMeter,
    as_frames,
    colour_error,
    drift_ratio,
    frame_changes,
    identity_errors,
    pearson,
    seam_ratio,
    ssim,
    structure_error,
)
from .runner import (
    SAMPLER_TABLE,
    TARGETS,
    EvalSample,
    checks,
    evaluate_checkpoint,
    format_report,
    heldout_samples,
    heldout_speech,
    identity_seeds,
    sampler_table,
)

__all__ = [
    "MouthMeter",
    "as_frames",
    "colour_error",
    "drift_ratio",
    "frame_changes",
    "identity_errors",
    "pearson",
    "seam_ratio",
    "ssim",
    "structure_error",
    "SAMPLER_TABLE",
    "TARGETS",
    "EvalSample",
    "checks",
    "evaluate_checkpoint",
    "format_report",
    "heldout_samples",
    "heldout_speech",
    "identity_seeds",
    "sampler_table",
]
