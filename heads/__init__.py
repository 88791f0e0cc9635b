"""Small detection heads on cached features: registry, configs, the fit loop, save/load."""

from heads import expert, fusion, gating, linear, mlp, prototype, router  # noqa: F401  (imports register heads)
from heads._registry import available, build, head_class, make_config, register_head
from heads.io import load, save
from heads.released import gapl_prototype, linear_probe, uar_linear
from heads.train import FitConfig, Stage, explain, fit, lr_at, predict

__all__ = [
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
    "lr_at",
    "make_config",
    "predict",
    "register_head",
    "save",
    "uar_linear",
]
