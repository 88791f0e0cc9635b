"""Small detection heads on cached features: registry, configs, the fit loop, save/load."""

import importlib as _importlib
import pkgutil as _pkgutil

from aigi.heads._registry import available, build, head_class, make_config, register_head
from aigi.heads.bank import FolderStages, Member, fit, fit_many
from aigi.heads.calibration import Calibration, fit_calibration
from aigi.heads.io import calibration_of, load, needs_frozen, read_info, save, save_calibration
from aigi.heads.released import gapl_prototype, linear_probe, uar_linear
from aigi.heads.train import FitConfig, Stage, explain, logits, lr_at, predict

# Importing a module registers the heads it defines (`@register_head`): every public module of the package is
# imported, so a new head is one file heads/NAME.py.
for _module in _pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        _importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "Calibration",
    "calibration_of",
    "fit_calibration",
    "save_calibration",
    "FitConfig",
    "FolderStages",
    "Member",
    "Stage",
    "available",
    "build",
    "explain",
    "fit",
    "fit_many",
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
