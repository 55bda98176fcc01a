"""NumPy float64 oracles shared by several test modules: independent of jaxcons, written from
the papers."""

from __future__ import annotations

import numpy as np


def np_simplex(v: np.ndarray, total: float) -> np.ndarray:
    """Duchi et al. (2008), figure 1, in float64: sort, cumulative sums, threshold."""
    u = np.sort(v)[::-1]
    cs = np.cumsum(u)
    k = np.arange(1, v.size + 1)
    rho = np.nonzero(u - (cs - total) / k > 0)[0][-1]
    theta = (cs[rho] - total) / (rho + 1)
    return np.maximum(v - theta, 0)


def np_l1_ball(v: np.ndarray, radius: float) -> np.ndarray:
    if np.sum(np.abs(v)) <= radius:
        return v.copy()
    return np.sign(v) * np_simplex(np.abs(v), radius)
