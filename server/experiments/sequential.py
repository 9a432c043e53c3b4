"""Always-valid inference on a difference of two means, for reports that are read at any time.

The normal-mixture sequential probability ratio test (mSPRT) of Johari, Pekelis & Walsh,
"Always valid inference" (the method of Optimizely's stats engine). The difference of means
d = mean(arm) - mean(control) is taken as N(theta, V) with the plug-in variance
V = s_arm^2 / n_arm + s_control^2 / n_control. Mixing the likelihood ratio of theta against
theta0 over theta ~ N(theta0, tau^2) gives

    Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 (d - theta0)^2 / (2 V (V + tau^2)))

a martingale under theta = theta0 (in the Gaussian limit), so by Ville's inequality
P(Lambda ever reaches 1 / alpha) <= alpha, however often it is looked at. From it:

- always-valid p-value: p = min(1, 1 / Lambda) at theta0 = 0. Johari et al. report the running
  minimum over time, which needs state; the report is recomputed from every row on each read,
  so this gives the plain value at the current n. That is still valid at any stopping time
  (P(p_T <= a) <= P(sup Lambda >= 1 / a) <= a): acting the first time it falls under alpha is
  safe. It may rise again afterwards, which the running minimum would hide.
- confidence sequence: the theta0 not rejected, d +- the half-width below; it holds the true
  difference at every n at once with probability >= 1 - alpha.

tau is TAU_SD times the pooled sd (the root of the mean of the two arms' variances), so one
setting suits seconds and feedback scores alike. With n per arm and equal variances the
boundary in z = d / sqrt(V) is z^2 >= (1 + 1/r)(2 log(1/alpha) + log(1 + r)), r = TAU_SD^2 n / 2,
smallest (z = 3.04) at r ~ 8. TAU_SD = 0.15 puts that optimum at n ~ 700 per arm: the boundary is
z = 3.04 at n = 1000 (where effects of 0.1-0.5 sd are the ones worth finding), 3.15 at 250,
3.09 at 2000, 3.29 at 10000; very early looks are guarded (z = 7.8 at n = 10).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ALPHA = 0.05
TAU_SD = 0.15
MIN_N = 10  # per arm; fewer leaves the plug-in variance too rough to scale by
MDE_DEFINITION = "half-width of the current confidence sequence"


def log_mixture_ratio(diff, var, tau2):
    """log Lambda at theta0 = 0; numpy arrays or floats (the simulations vectorise over runs)."""
    return 0.5 * np.log(var / (var + tau2)) + tau2 * diff**2 / (2 * var * (var + tau2))


def always_valid_p(diff, var, tau2):
    return np.exp(np.minimum(0.0, -log_mixture_ratio(diff, var, tau2)))


def half_width(var, tau2, alpha: float = ALPHA):
    """Half-width of the confidence sequence: |d - theta0| beyond it means Lambda >= 1/alpha."""
    return np.sqrt(
        2 * var * (var + tau2) / tau2 * (np.log(1 / alpha) + 0.5 * np.log((var + tau2) / var))
    )


def mixing_variance(var_arm, var_control):
    return TAU_SD**2 * (var_arm + var_control) / 2


@dataclass
class Comparison:
    """arm minus control."""

    difference: float
    always_valid_p: float
    low: float
    high: float

    @property
    def mde(self) -> float:
        return (self.high - self.low) / 2


def smoothed_binary_variance(values: np.ndarray) -> float:
    """p(1-p) with p = (x + 0.5) / (n + 1): never zero, so no errors in 20 requests is not read
    as certainty that there never will be."""
    p = (float(np.sum(values)) + 0.5) / (len(values) + 1)
    return p * (1 - p)


def compare(
    control: list[float] | np.ndarray,
    arm: list[float] | np.ndarray,
    binary: bool = False,
    alpha: float = ALPHA,
) -> Comparison | None:
    """Always-valid comparison of mean(arm) - mean(control); None when either arm has fewer
    than MIN_N values or neither varies. `binary`: 0/1 outcomes, with a smoothed variance."""
    a, c = np.asarray(arm, dtype=float), np.asarray(control, dtype=float)
    if len(a) < MIN_N or len(c) < MIN_N:
        return None
    if binary:
        var_a, var_c = smoothed_binary_variance(a), smoothed_binary_variance(c)
    else:
        var_a, var_c = float(np.var(a, ddof=1)), float(np.var(c, ddof=1))
    var = var_a / len(a) + var_c / len(c)
    if var <= 0:
        return None
    tau2 = mixing_variance(var_a, var_c)
    diff = float(np.mean(a) - np.mean(c))
    width = float(half_width(var, tau2, alpha))
    return Comparison(diff, float(always_valid_p(diff, var, tau2)), diff - width, diff + width)


def decision(comparison: Comparison | None, higher_is_better: bool) -> str:
    """'better' / 'worse' when the confidence sequence excludes zero (always_valid_p < alpha),
    else 'no difference yet'."""
    if comparison is None or comparison.low <= 0 <= comparison.high:
        return "no difference yet"
    arm_higher = comparison.low > 0
    return "better" if arm_higher == higher_is_better else "worse"


def summary(comparison: Comparison | None, higher_is_better: bool) -> dict:
    """The report's always-valid figures, JSON-ready (None where there is not enough data)."""
    if comparison is None:
        return {
            "always_valid_p": None,
            "confidence_sequence": None,
            "decision": decision(None, higher_is_better),
            "mde": None,
        }
    return {
        "always_valid_p": comparison.always_valid_p,
        "confidence_sequence": [comparison.low, comparison.high],
        "decision": decision(comparison, higher_is_better),
        "mde": comparison.mde,
    }
