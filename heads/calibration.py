"""Calibration stored with a head: temperature / Platt scaling of its logits, a decision threshold, an abstain band.

Everything is fitted on validation rows (never on test rows) and lives in head.json under `calibration`.

- Scaling: `temperature` gives P(fake) = sigmoid(z / T) (one parameter, keeps the ranking and the 0.5 cut);
  `platt` gives sigmoid(a * z + b). Both minimise the binary cross-entropy of the validation logits with L-BFGS.
- Threshold policies (on the calibrated probability; rule: P(fake) >= threshold => fake):
  `fixed` (0.5 or any value), `val_acc` (the cut maximising balanced accuracy on the validation rows, moved
  halfway down to the next lower score, as `aigi eval --threshold val`), `target_fpr` (split-conformal on the
  real validation rows: with n reals and target a, the threshold sits just above the ceil((n+1)(1-a))-th smallest
  real score, so a new real exchangeable with them is called fake with probability <= a).
- Abstain band (low, high): P(fake) >= high => fake, P(fake) <= low => real, in between => unsure.
  `coverage:C` abstains on the (1-C) share of validation rows whose calibrated logit is nearest the threshold's;
  `error:A` is class-conditional split-conformal: high just above the ceil((n_real+1)(1-A))-th smallest real score
  and low just below the floor((n_fake+1)A)-th smallest fake score, so a new real is called fake, and a new fake
  called real, with probability <= A each; rows where both answers are plausible are unsure.
- A threshold and a band fitted together both keep what head.json says they are: the band is widened to hold the
  threshold (fake needs P(fake) >= max(high, threshold), real needs P(fake) <= low and < threshold), so a target-FPR
  threshold keeps its FPR and the band its error rates. When the threshold lies in [high, low] (classes that do
  not overlap that much) it meets both targets alone and there is no band.
- Every value is checked when it is made or read from head.json: T > 0 and a Platt slope > 0 (a negative one
  would invert the ranking), a threshold and a band inside [0, 1], targets inside (0, 1), all finite.
- Rows whose logit is NaN/inf get the verdict INVALID (-2): they are reported, never called real or fake.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

METHODS = ("none", "temperature", "platt")
THRESHOLD_POLICIES = ("fixed", "val_acc", "target_fpr")
BAND_POLICIES = ("none", "coverage", "error")
REAL, FAKE, UNSURE, INVALID = 0, 1, -1, -2
VERDICTS = {REAL: "real", FAKE: "fake", UNSURE: "unsure", INVALID: "invalid"}


@dataclass(frozen=True)
class Calibration:
    """A fitted calibration; `Calibration()` is the identity with the 0.5 threshold and no band."""

    method: str = "none"
    temperature: float = 1.0
    slope: float = 1.0
    bias: float = 0.0
    threshold: float = 0.5
    threshold_policy: str = "fixed"
    target_fpr: float | None = None
    band: tuple[float, float] | None = None
    band_policy: str = "none"
    band_target: float | None = None
    fitted_on: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for value, allowed, what in [
            (self.method, METHODS, "method"),
            (self.threshold_policy, THRESHOLD_POLICIES, "threshold policy"),
            (self.band_policy, BAND_POLICIES, "band policy"),
        ]:
            if value not in allowed:
                raise ValueError(f"calibration {what} must be one of {allowed}, got {value!r}")
        _check_values(self)

    def calibrated_logits(self, logits: np.ndarray) -> np.ndarray:
        """The logits after scaling (float64)."""
        z = np.asarray(logits, dtype=np.float64)
        if self.method == "temperature":
            return z / self.temperature
        if self.method == "platt":
            return self.slope * z + self.bias
        return z

    def probability(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated P(fake) of raw head logits."""
        return _sigmoid(self.calibrated_logits(logits))

    def verdict(self, probs: np.ndarray) -> np.ndarray:
        """0 real, 1 fake, -1 unsure, -2 invalid (NaN/inf) for calibrated probabilities (int8)."""
        p = np.asarray(probs, dtype=np.float64)
        if self.band is None:
            out = (p >= self.threshold).astype(np.int8)
        else:
            low, high = self.band
            out = np.full(p.shape, UNSURE, dtype=np.int8)
            out[p >= high] = FAKE
            out[p <= low] = REAL
        out[~np.isfinite(p)] = INVALID
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready content for head.json."""
        out = dataclasses.asdict(self)
        out["band"] = None if self.band is None else [float(v) for v in self.band]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Calibration:
        """The calibration stored in head.json (`None` -> identity); unknown keys are errors."""
        if not data:
            return cls()
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"head.json calibration has unknown keys {unknown}; known: {sorted(known)}")
        data = dict(data)
        try:
            if data.get("band") is not None:
                data["band"] = tuple(float(v) for v in data["band"])
            return cls(**data)
        except TypeError as err:  # a value of the wrong type (a string where a number belongs)
            raise ValueError(f"calibration holds a value of the wrong type ({err})") from None


def _check_values(cal: Calibration) -> None:
    """Refuse values that would give wrong P(fake) or verdicts silently (see the module doc)."""
    numbers = {"temperature": cal.temperature, "slope": cal.slope, "bias": cal.bias, "threshold": cal.threshold}
    for name, value in numbers.items():
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise ValueError(f"calibration {name} must be a finite number, got {value!r}")
    if cal.temperature <= 0:
        raise ValueError(f"calibration temperature must be > 0, got {cal.temperature:g} (T <= 0 inverts or breaks "
                         "the scores)")  # fmt: skip
    if cal.slope <= 0:
        raise ValueError(f"calibration slope must be > 0, got {cal.slope:g} (a slope <= 0 inverts the ranking)")
    if not 0.0 <= cal.threshold <= 1.0:
        raise ValueError(f"calibration threshold must be a P(fake) in [0, 1], got {cal.threshold:g}")
    for name, value in (("target_fpr", cal.target_fpr), ("band_target", cal.band_target)):
        if value is not None and not (isinstance(value, int | float) and 0.0 < value < 1.0):
            raise ValueError(f"calibration {name} must be in (0, 1), got {value!r}")
    if cal.band is not None:
        low, high = cal.band
        if not (math.isfinite(low) and math.isfinite(high) and 0.0 <= low < high <= 1.0):
            raise ValueError(f"abstain band must be (low, high) with 0 <= low < high <= 1, got {cal.band}")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """torch's float64 sigmoid, so an identity calibration gives exactly `heads.predict`'s scores."""
    return torch.sigmoid(torch.as_tensor(np.asarray(z, dtype=np.float64))).numpy()


def _log_odds(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) in float64 (+-inf at 0 and 1)."""
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.log(p) - np.log1p(-p)


def _logit(p: float) -> float:
    p = min(max(p, 1e-300), 1.0 - 1e-16)
    return math.log(p) - math.log1p(-p)


def _check(logits: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    z, y = np.asarray(logits, dtype=np.float64), np.asarray(labels).astype(np.float64)
    if z.shape != y.shape or z.ndim != 1:
        raise ValueError(f"logits {z.shape} and labels {y.shape} must be two vectors of the same length")
    if not np.isfinite(z).all():
        raise ValueError(f"{int((~np.isfinite(z)).sum())} validation logits are NaN/inf: cannot calibrate")
    if np.unique(y).size < 2:
        raise ValueError("calibration needs validation rows of both classes (real and fake)")
    return torch.from_numpy(z), torch.from_numpy(y)


def _minimise(params: list[torch.Tensor], loss_fn: Any, *, max_iter: int) -> None:
    opt = torch.optim.LBFGS(
        params, lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-12, tolerance_change=1e-15
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    opt.step(closure)


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, max_iter: int = 200) -> float:
    """The temperature T > 0 minimising the cross-entropy of sigmoid(logits / T) (optimised over log T)."""
    z, y = _check(logits, labels)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    _minimise([log_t], lambda: F.binary_cross_entropy_with_logits(z * torch.exp(-log_t), y), max_iter=max_iter)
    return float(torch.exp(log_t.detach()))


def fit_platt(logits: np.ndarray, labels: np.ndarray, *, max_iter: int = 200) -> tuple[float, float]:
    """(a, b) minimising the cross-entropy of sigmoid(a * logits + b)."""
    z, y = _check(logits, labels)
    ab = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    _minimise([ab], lambda: F.binary_cross_entropy_with_logits(ab[0] * z + ab[1], y), max_iter=max_iter)
    a, b = ab.detach().tolist()
    return float(a), float(b)


def threshold_val_acc(probs: np.ndarray, labels: np.ndarray, *, logits: np.ndarray | None = None) -> float:
    """The cut maximising balanced accuracy (highest among ties), moved halfway down to the next lower score;
    ranked on the calibrated `logits` when given (probabilities near 0 or 1 tie where logits do not)."""
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(labels).astype(bool)
    if y.all() or not y.any():
        raise ValueError("the val_acc threshold needs validation rows of both classes (real and fake)")
    z = np.asarray(logits if logits is not None else _log_odds(p), dtype=np.float64)  # ranked on logits: no ties
    order = np.argsort(-z, kind="mergesort")
    s, ys = z[order], y[order]
    ends = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]  # last row of each block of tied scores
    tp, fp = np.cumsum(ys)[ends], np.cumsum(~ys)[ends]
    best = int(np.argmax(tp * int((~ys).sum()) - fp * int(ys.sum())))  # balanced ACC x 2PN - PN, in exact integers
    ps = p[order]
    cut = float(ps[ends[best]])
    return cut if best == len(ends) - 1 else (cut + float(ps[ends[best] + 1])) / 2.0


def conformal_high(real_probs: np.ndarray, alpha: float) -> float:
    """Threshold just above the k-th smallest real score, k = ceil((n+1)(1-alpha)) = n + 1 - floor((n+1)alpha).

    When k > n (too few reals for `alpha`) it sits just above the largest real score.
    """
    r = np.sort(np.asarray(real_probs, dtype=np.float64))
    if r.size == 0:
        raise ValueError("a target-FPR threshold needs real validation rows")
    k = min(r.size + 1 - math.floor((r.size + 1) * alpha + 1e-12), r.size)
    return 0.0 if k <= 0 else float(np.nextafter(r[k - 1], np.inf))


def conformal_low(fake_probs: np.ndarray, alpha: float) -> float:
    """Band low end just below the floor((n+1)alpha)-th smallest fake score (0 when that rank is 0)."""
    f = np.sort(np.asarray(fake_probs, dtype=np.float64))
    if f.size == 0:
        raise ValueError("an error-targeted abstain band needs fake validation rows")
    rank = math.floor((f.size + 1) * alpha + 1e-12)
    return 0.0 if rank == 0 else float(np.nextafter(f[min(rank, f.size) - 1], -np.inf))


def coverage_band(probs: np.ndarray, threshold: float, coverage: float) -> tuple[float, float] | None:
    """The band around `threshold` (symmetric in logit) holding the (1-coverage) share of rows nearest to it."""
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    centre = _logit(threshold)
    z = np.log(np.clip(probs, 1e-300, None)) - np.log1p(-np.clip(probs, None, 1.0 - 1e-16))
    d = np.sort(np.abs(z - centre))
    m = math.floor((1.0 - coverage) * d.size + 1e-9)
    if m == 0:
        return None
    r = float(d[min(m, d.size - 1)])
    return (float(_sigmoid(np.float64(centre - r))), float(_sigmoid(np.float64(centre + r)))) if r > 0 else None


def fit_calibration(
    logits: np.ndarray,
    labels: np.ndarray,
    *,
    method: str = "temperature",
    threshold_policy: str = "fixed",
    threshold: float = 0.5,
    target_fpr: float = 0.01,
    band_policy: str = "none",
    band_target: float | None = None,
) -> Calibration:
    """Fit scaling, threshold and band on validation (logits, labels) in that order (see the module doc)."""
    z, y = np.asarray(logits, dtype=np.float64), np.asarray(labels).astype(np.int64)
    _check(z, y)
    scale: dict[str, float] = {}
    if method == "temperature":
        scale["temperature"] = fit_temperature(z, y)
    elif method == "platt":
        scale["slope"], scale["bias"] = fit_platt(z, y)
    elif method != "none":
        raise ValueError(f"calibration method must be one of {METHODS}, got {method!r}")
    if scale.get("slope", 1.0) <= 0:
        raise ValueError(
            f"Platt scaling fitted a slope of {scale['slope']:.3g} <= 0: on the validation rows the head ranks reals "
            "above fakes; retrain it (or check the labels) before calibrating"
        )
    base = Calibration(method=method, **scale)
    p, zc = base.probability(z), base.calibrated_logits(z)
    if threshold_policy == "val_acc":
        threshold = threshold_val_acc(p, y, logits=zc)
    elif threshold_policy == "target_fpr":
        threshold = conformal_high(p[y == 0], _fraction(target_fpr, "target FPR"))
    elif threshold_policy != "fixed":
        raise ValueError(f"threshold policy must be one of {THRESHOLD_POLICIES}, got {threshold_policy!r}")
    band = None
    if band_policy == "coverage":
        band = coverage_band(p, threshold, _fraction(band_target, "band coverage"))
    elif band_policy == "error":
        alpha = _fraction(band_target, "band error")
        band = band_with_threshold(conformal_low(p[y == 1], alpha), conformal_high(p[y == 0], alpha), threshold)
    elif band_policy != "none":
        raise ValueError(f"band policy must be one of {BAND_POLICIES}, got {band_policy!r}")
    return dataclasses.replace(
        base,
        threshold=float(threshold),
        threshold_policy=threshold_policy,
        target_fpr=float(target_fpr) if threshold_policy == "target_fpr" else None,
        band=band,
        band_policy=band_policy,
        band_target=None if band_policy == "none" else float(band_target),
        fitted_on={"rows": int(y.size), "real": int((y == 0).sum()), "fake": int((y == 1).sum())},
    )


def band_with_threshold(low: float, high: float, threshold: float) -> tuple[float, float] | None:
    """The error band (low, high) widened to hold `threshold` (see the module doc); None when the threshold alone
    meets both targets (high <= threshold <= low)."""
    if high <= threshold <= low:
        return None
    lo, hi = min(low, float(np.nextafter(threshold, -np.inf))), max(high, threshold)
    return (max(lo, 0.0), min(hi, 1.0)) if lo < hi else None


def _fraction(value: float | None, what: str) -> float:
    if value is None or not 0.0 < float(value) < 1.0:
        raise ValueError(f"{what} must be a number in (0, 1), got {value!r}")
    return float(value)
