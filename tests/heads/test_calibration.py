"""Calibration stored with a head: scaling fits, threshold policies, abstain bands, head.json round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from aigi import heads
from aigi.heads.calibration import (
    Calibration,
    conformal_high,
    conformal_low,
    coverage_band,
    fit_calibration,
    fit_platt,
    fit_temperature,
    threshold_val_acc,
)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def synthetic_logits(n: int, temperature: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits z ~ N(0, 4^2) whose true P(fake) is sigmoid(z / temperature)."""
    rng = np.random.default_rng(seed)
    z = 4.0 * rng.standard_normal(n)
    return z, (rng.random(n) < _sigmoid(z / temperature)).astype(np.int64)


@pytest.mark.parametrize("true_t", [0.5, 2.5])
def test_temperature_scaling_recovers_a_known_temperature(true_t: float) -> None:
    z, y = synthetic_logits(100_000, true_t)
    assert fit_temperature(z, y) == pytest.approx(true_t, rel=0.02)


def test_platt_matches_an_unregularised_logistic_regression() -> None:
    z, y = synthetic_logits(20_000, 2.0, seed=1)
    z = z + 0.7  # an offset Platt's bias must undo
    a, b = fit_platt(z, y)
    ref = LogisticRegression(C=1e12, tol=1e-10, max_iter=1000).fit(z[:, None], y)
    assert a == pytest.approx(float(ref.coef_[0, 0]), rel=1e-4)
    assert b == pytest.approx(float(ref.intercept_[0]), abs=1e-4)


def test_val_acc_threshold_on_a_hand_computed_case() -> None:
    # cuts >= 0.8 and >= 0.6 both give balanced ACC 5/6; the higher one wins, moved halfway to the next score 0.7
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.3])
    y = np.array([1, 1, 0, 1, 0, 0])
    assert threshold_val_acc(p, y) == pytest.approx(0.75)
    assert threshold_val_acc(np.array([0.2, 0.9]), np.array([0, 1])) == pytest.approx(0.55)


def test_conformal_threshold_by_hand_and_its_guarantee() -> None:
    reals = np.arange(1, 20) / 20  # 19 reals, alpha 0.1: k = ceil(20 * 0.9) = 18 -> just above 0.90
    t = conformal_high(reals, 0.1)
    assert 0.9 < t < 0.9 + 1e-12
    assert (reals >= t).sum() == 1
    assert conformal_high(np.arange(1, 10) / 10, 0.05) > 0.9  # (n+1) alpha < 1: above every real
    # exchangeable reals: the expected FPR of a new real is 1 - k/(n+1) = 0.05 exactly for n = 99, alpha = 0.05
    rng = np.random.default_rng(0)
    fpr = [(rng.random(2000) >= conformal_high(rng.random(99), 0.05)).mean() for _ in range(400)]
    assert np.mean(fpr) == pytest.approx(0.05, abs=0.004)
    fakes = np.array([0.8, 0.2, 0.6, 0.4])
    assert conformal_low(fakes, 0.25) < 0.2 < conformal_low(fakes, 0.25) + 1e-12  # rank floor(5 * 0.25) = 1
    assert ((fakes <= conformal_low(fakes, 0.4)).sum(), conformal_low(fakes, 0.1)) == (1, 0.0)


def test_coverage_band_abstains_on_the_rows_nearest_the_threshold() -> None:
    z = np.array([-4.5, -3.5, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5, 4.5])
    low, high = coverage_band(_sigmoid(z), 0.5, 0.8)  # 2 of 10 rows abstain: |z| < 1.5
    assert (low, high) == pytest.approx((_sigmoid(-1.5), _sigmoid(1.5)))
    cal = Calibration(band=(low, high))
    assert cal.verdict(_sigmoid(z)).tolist() == [0, 0, 0, 0, -1, -1, 1, 1, 1, 1]
    assert coverage_band(_sigmoid(z), 0.5, 0.95) is None


def test_error_band_and_separated_classes() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 500)
    z = rng.standard_normal(1000) + 2.0 * y - 1.0  # overlapping classes
    cal = fit_calibration(z, y, method="none", band_policy="error", band_target=0.05)
    p, v = cal.probability(z), cal.verdict(cal.probability(z))
    assert cal.band is not None and (v == -1).any()
    assert (v[y == 0] == 1).mean() <= 0.05 and (v[y == 1] == 0).mean() <= 0.05
    assert ((p > cal.band[0]) & (p < cal.band[1]) == (v == -1)).all()
    far = np.where(y == 1, 10.0, -10.0) + 0.1 * rng.standard_normal(1000)  # no overlap: no band
    sep = fit_calibration(far, y, method="temperature", band_policy="error", band_target=0.05)
    assert sep.band is None and (sep.verdict(sep.probability(far)) == y).all()


def test_fit_calibration_target_fpr_uses_calibrated_probabilities() -> None:
    z, y = synthetic_logits(4000, 2.0, seed=3)
    cal = fit_calibration(z, y, method="temperature", threshold_policy="target_fpr", target_fpr=0.01)
    assert cal.temperature == pytest.approx(2.0, rel=0.1)
    p = _sigmoid(z / cal.temperature)
    assert cal.threshold == pytest.approx(conformal_high(p[y == 0], 0.01))
    assert (p[y == 0] >= cal.threshold).mean() <= 0.01


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="both classes"):
        fit_calibration(np.zeros(4), np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        fit_calibration(np.array([0.0, np.nan]), np.array([0, 1]))
    with pytest.raises(ValueError, match="method"):
        fit_calibration(np.array([0.0, 1.0]), np.array([0, 1]), method="isotonic")
    with pytest.raises(ValueError, match="band coverage"):
        fit_calibration(np.array([0.0, 1.0]), np.array([0, 1]), band_policy="coverage", band_target=1.5)


def test_calibration_round_trips_through_head_json(tmp_path: Path) -> None:
    head = heads.build("linear", inputs=["f"], in_dim=4)
    x = np.random.default_rng(0).standard_normal((50, 4)).astype(np.float32)
    z = heads.logits(head, {"f": x})
    # labels that follow the logits (with noise): a Platt slope fitted on them is positive (a negative one is refused)
    y = (z + 0.5 * np.random.default_rng(1).standard_normal(50) > np.median(z)).astype(int)
    np.testing.assert_allclose(_sigmoid(z), heads.predict(head, {"f": x}), rtol=1e-12)
    np.testing.assert_array_equal(Calibration().probability(z), heads.predict(head, {"f": x}))  # bit for bit
    cal = fit_calibration(z, y, method="platt", threshold_policy="val_acc", band_policy="coverage", band_target=0.9)
    heads.save(head, tmp_path / "h", meta={"train_rows": 7})
    assert heads.calibration_of(heads.load(tmp_path / "h")[1]) == Calibration()
    heads.save_calibration(tmp_path / "h", cal)
    _, info = heads.load(tmp_path / "h")
    assert info["train_rows"] == 7 and heads.calibration_of(info) == cal
    heads.save(head, tmp_path / "g", calibration=cal)
    assert json.loads((tmp_path / "g" / "head.json").read_text())["calibration"]["method"] == "platt"
    with pytest.raises(ValueError, match="unknown keys"):
        Calibration.from_dict({"method": "none", "temprature": 2.0})
