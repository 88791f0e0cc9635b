"""Optional parts of aigi, installed as pip extras, and the one error a command raises when one is missing.

The core (index, extract, train, eval, predict, ablate with --jobs) needs none of them:

- `fakes`: diffusers (VAE folders and AutoencoderKL files for `aigi fakes vae`) and spandrel (`aigi fakes sr`);
- `dask`: dask.distributed (`--workers` / `--scheduler` of `aigi extract` and `aigi ablate`);
- `plots`: matplotlib (the PNG figures; reports are written without them when it is missing).

Code that needs one imports it through `require`, inside the function that uses it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# The top-level module of each optional package -> the extra that installs it.
EXTRA_OF = {"diffusers": "fakes", "spandrel": "fakes", "dask": "dask", "distributed": "dask", "matplotlib": "plots"}


class MissingExtra(ImportError):
    """An optional package a command needs cannot be imported; the message names the extra that installs it."""

    def __init__(self, module: str, *, extra: str, needed_for: str, reason: str = "") -> None:
        self.extra = extra
        state = f"which cannot be imported ({reason})" if reason else "which is not installed"
        package = module.split(".")[0]
        super().__init__(f"{needed_for} needs {package}, {state}: pip install 'aigi[{extra}]'", name=module)


def require(module: str, *, needed_for: str, extra: str | None = None) -> ModuleType:
    """Import `module` of an optional package; when it cannot be imported, raise `MissingExtra` naming the extra.

    Args:
        module: e.g. "diffusers" or "dask.distributed".
        needed_for: what needs it, for the message ("a diffusers VAE folder", "--workers").
        extra: the extra to install (default: the one `EXTRA_OF` lists for the module's package).
    """
    extra = extra or EXTRA_OF[module.split(".")[0]]
    try:
        return importlib.import_module(module)
    except ImportError as err:
        missing = getattr(err, "name", None) or ""
        reason = "" if missing.split(".")[0] == module.split(".")[0] else " ".join(str(err).split())[:160]
        raise MissingExtra(module, extra=extra, needed_for=needed_for, reason=reason) from err


def available(module: str) -> bool:
    """Whether `module` can be imported (it is imported to find out)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
