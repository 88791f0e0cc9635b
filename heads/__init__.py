"""Small detection heads on cached features: registry, configs, the fit loop, save/load."""

from heads import expert, fusion, gating, linear, mlp, prototype, router, tail  # noqa: F401  (imports register heads)
from heads._registry import available, build, head_class, make_config, register_head
from heads.calibration import Calibration, fit_calibration
from heads.io import calibration_of, load, needs_frozen, read_info, save, save_calibration
from heads.released import gapl_prototype, linear_probe, uar_linear
from heads.train import FitConfig, Stage, explain, fit, logits, lr_at, predict

__all__ = [
    "Calibration",
    "calibration_of",
    "fit_calibration",
    "save_calibration",
    "FitConfig",
    "Stage",
    "available",
    "build",
    "explain",
    "fit",
    "gapl_prototype",
    "head_class",
    "linear_probe",
    "load",
    "logits",
    "lr_at",
    "make_config",
    "needs_frozen",
    "predict",
    "read_info",
    "register_head",
    "save",
    "uar_linear",
]
