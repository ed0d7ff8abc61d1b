"""Mean intergalactic H I transmission of Inoue, Shimizu, Iwata & Tanaka 2014, MNRAS 442, 1805.

Analytic model: Lyman-series absorption by the Lyα forest (LAF) and damped Lyα systems (DLA)
summed over 39 lines (their Table 2, eqs 21–22), plus Lyman-continuum absorption (eqs 25–29).
The coefficients below are transcribed from the paper's Table 2 (j = 2…40).
"""

from __future__ import annotations

import numpy as np

LAMBDA_LL = 911.8  # Lyman limit [Å] as used by Inoue et al. 2014

# columns: λ_j [Å], A_LAF_j1, A_LAF_j2, A_LAF_j3, A_DLA_j1, A_DLA_j2  (Inoue et al. 2014, Table 2)
_TABLE2 = np.array([
    [1215.67, 1.690e-02, 2.354e-03, 1.026e-04, 1.617e-04, 5.390e-05],
    [1025.72, 4.692e-03, 6.536e-04, 2.849e-05, 1.545e-04, 5.151e-05],
    [972.537, 2.239e-03, 3.119e-04, 1.360e-05, 1.498e-04, 4.992e-05],
    [949.743, 1.319e-03, 1.837e-04, 8.010e-06, 1.460e-04, 4.868e-05],
    [937.803, 8.707e-04, 1.213e-04, 5.287e-06, 1.429e-04, 4.763e-05],
    [930.748, 6.178e-04, 8.606e-05, 3.752e-06, 1.402e-04, 4.672e-05],
    [926.226, 4.609e-04, 6.421e-05, 2.799e-06, 1.377e-04, 4.590e-05],
    [923.150, 3.569e-04, 4.971e-05, 2.167e-06, 1.355e-04, 4.516e-05],
    [920.963, 2.843e-04, 3.960e-05, 1.726e-06, 1.335e-04, 4.448e-05],
    [919.352, 2.318e-04, 3.229e-05, 1.407e-06, 1.316e-04, 4.385e-05],
    [918.129, 1.923e-04, 2.679e-05, 1.168e-06, 1.298e-04, 4.326e-05],
    [917.181, 1.622e-04, 2.259e-05, 9.847e-07, 1.281e-04, 4.271e-05],
    [916.429, 1.385e-04, 1.929e-05, 8.410e-07, 1.265e-04, 4.218e-05],
    [915.824, 1.196e-04, 1.666e-05, 7.263e-07, 1.250e-04, 4.168e-05],
    [915.329, 1.043e-04, 1.453e-05, 6.334e-07, 1.236e-04, 4.120e-05],
    [914.919, 9.174e-05, 1.278e-05, 5.571e-07, 1.222e-04, 4.075e-05],
    [914.576, 8.128e-05, 1.132e-05, 4.936e-07, 1.209e-04, 4.031e-05],
    [914.286, 7.251e-05, 1.010e-05, 4.403e-07, 1.197e-04, 3.989e-05],
    [914.039, 6.505e-05, 9.062e-06, 3.950e-07, 1.185e-04, 3.949e-05],
    [913.826, 5.868e-05, 8.174e-06, 3.563e-07, 1.173e-04, 3.910e-05],
    [913.641, 5.319e-05, 7.409e-06, 3.230e-07, 1.162e-04, 3.872e-05],
    [913.480, 4.843e-05, 6.746e-06, 2.941e-07, 1.151e-04, 3.836e-05],
    [913.339, 4.427e-05, 6.167e-06, 2.689e-07, 1.140e-04, 3.800e-05],
    [913.215, 4.063e-05, 5.660e-06, 2.467e-07, 1.130e-04, 3.766e-05],
    [913.104, 3.738e-05, 5.207e-06, 2.270e-07, 1.120e-04, 3.732e-05],
    [913.006, 3.454e-05, 4.811e-06, 2.097e-07, 1.110e-04, 3.700e-05],
    [912.918, 3.199e-05, 4.456e-06, 1.943e-07, 1.101e-04, 3.668e-05],
    [912.839, 2.971e-05, 4.139e-06, 1.804e-07, 1.091e-04, 3.637e-05],
    [912.768, 2.766e-05, 3.853e-06, 1.680e-07, 1.082e-04, 3.607e-05],
    [912.703, 2.582e-05, 3.596e-06, 1.568e-07, 1.073e-04, 3.578e-05],
    [912.645, 2.415e-05, 3.364e-06, 1.466e-07, 1.065e-04, 3.549e-05],
    [912.592, 2.263e-05, 3.153e-06, 1.375e-07, 1.056e-04, 3.521e-05],
    [912.543, 2.126e-05, 2.961e-06, 1.291e-07, 1.048e-04, 3.493e-05],
    [912.499, 2.000e-05, 2.785e-06, 1.214e-07, 1.040e-04, 3.466e-05],
    [912.458, 1.885e-05, 2.625e-06, 1.145e-07, 1.032e-04, 3.440e-05],
    [912.420, 1.779e-05, 2.479e-06, 1.080e-07, 1.024e-04, 3.414e-05],
    [912.385, 1.682e-05, 2.343e-06, 1.022e-07, 1.017e-04, 3.389e-05],
    [912.353, 1.593e-05, 2.219e-06, 9.673e-08, 1.009e-04, 3.364e-05],
    [912.324, 1.510e-05, 2.103e-06, 9.169e-08, 1.002e-04, 3.339e-05],
])


def _tau_lyman_series(lam: np.ndarray, z: float) -> np.ndarray:
    """LAF + DLA Lyman-series optical depth (Inoue et al. 2014, eqs 21 and 22)."""
    lj = _TABLE2[:, 0][:, None]
    x = lam[None, :] / lj
    inside = (lam[None, :] > lj) & (lam[None, :] < lj * (1.0 + z))
    laf = np.where(x < 2.2, _TABLE2[:, 1:2] * x**1.2,
                   np.where(x < 5.7, _TABLE2[:, 2:3] * x**3.7, _TABLE2[:, 3:4] * x**5.5))
    dla = np.where(x < 3.0, _TABLE2[:, 4:5] * x**2.0, _TABLE2[:, 5:6] * x**3.0)
    return np.sum(np.where(inside, laf + dla, 0.0), axis=0)


def _tau_laf_lc(lam: np.ndarray, z: float) -> np.ndarray:
    """LAF Lyman-continuum optical depth (Inoue et al. 2014, eqs 25–27)."""
    x = lam / LAMBDA_LL
    zp = 1.0 + z
    tau = np.zeros_like(lam)
    if z < 1.2:
        tau = 0.325 * (x**1.2 - zp**-0.9 * x**2.1)
    elif z < 4.7:
        tau = np.where(x < 2.2, 2.55e-2 * zp**1.6 * x**2.1 + 0.325 * x**1.2 - 0.250 * x**2.1,
                       2.55e-2 * (zp**1.6 * x**2.1 - x**3.7))
    else:
        tau = np.where(x < 2.2, 5.22e-4 * zp**3.4 * x**2.1 + 0.325 * x**1.2 - 3.14e-2 * x**2.1,
                       np.where(x < 5.7, 5.22e-4 * zp**3.4 * x**2.1 + 0.218 * x**2.1 - 2.55e-2 * x**3.7,
                                5.22e-4 * (zp**3.4 * x**2.1 - x**5.5)))
    return np.where(x < zp, tau, 0.0)


def _tau_dla_lc(lam: np.ndarray, z: float) -> np.ndarray:
    """DLA Lyman-continuum optical depth (Inoue et al. 2014, eqs 28–29)."""
    x = lam / LAMBDA_LL
    zp = 1.0 + z
    if z < 2.0:
        tau = 0.211 * zp**2 - 7.66e-2 * zp**2.3 * x**-0.3 - 0.135 * x**2.0
    else:
        tau = np.where(x < 3.0,
                       0.634 + 4.7e-2 * zp**3 - 1.78e-2 * zp**3.3 * x**-0.3 - 0.135 * x**2 - 0.291 * x**-0.3,
                       4.7e-2 * zp**3 - 1.78e-2 * zp**3.3 * x**-0.3 - 2.92e-2 * x**3)
    return np.where(x < zp, tau, 0.0)


def igm_transmission(wave_obs: np.ndarray, z: float) -> np.ndarray:
    """Mean IGM transmission exp(-τ) at observed wavelengths *wave_obs* [Å] for a source at *z*."""
    lam = np.asarray(wave_obs, float)
    out = np.ones_like(lam)
    if z <= 0:
        return out
    blue = lam < _TABLE2[0, 0] * (1.0 + z)  # no H I absorption redward of the source's Lyα
    if blue.any():
        lb = lam[blue]
        tau = _tau_lyman_series(lb, z) + _tau_laf_lc(lb, z) + _tau_dla_lc(lb, z)
        out[blue] = np.exp(-np.clip(tau, 0.0, 700.0))
    return out
