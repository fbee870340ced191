"""Error bounds of float32 rotary tables, derived from float32 rounding (for the text and vision tests).

u = 2^-24 is float32's unit roundoff: rounding x moves it by at most u|x|, and ulp(x) <= 2u|x|. A cos or
sin value lies in [-1, 1], where an ulp is at most u, so k ulps of it are at most k*u absolutely.

For a position p (an integer, exact in float32 below 2^24) and frequency slot i of a rotary of `dim`
frequencies-times-two, the exact frequency is inv = theta^-e with e = 2i / dim and the exact angle is
a = p * inv. cos and sin are 1-Lipschitz, so a table entry is off by at most its angle's error plus the
error of evaluating cos/sin at the (float32) angle:

  ours (`rotary_inv_freq`, then float32 p * inv32 and XLA's cos/sin):
    inv32 = round32(inv)                 |inv32 - inv|     <= u * inv
    angle = round32(p * inv32)           |angle - p*inv32| <= u * p * inv32
    => |cos_ours - cos(a)| <= 2u * p * inv + COS_SIN_ULPS * u

  transformers (torch float32: 1 / theta ** (arange(0, dim, 2) / dim), then p * inv and cos/sin):
    q = round32(e)                       |q - e| <= u * e   (0 when dim is a power of two)
    theta^q = theta^e * exp(ln(theta) * (q - e))   relative error <= ln(theta) * e * u
    pow's own error, POW_ULPS ulp                  relative error <= 2 * POW_ULPS * u
    1 / x, one rounding                            relative error <= u
    => |inv_t - inv| <= (ln(theta) * e + 2 * POW_ULPS + 1) * u * inv
    the product p * inv_t adds u * p * inv
    => |cos_torch - cos(a)| <= (ln(theta) * e + 2 * POW_ULPS + 2) * u * p * inv + COS_SIN_ULPS * u

Second-order terms (u^2 * p * inv < 1e-10 at p = 3e4) and the float64 reference's own error
(~16 * 2^-53 * a < 1e-10) are far below the COS_SIN_ULPS * u = 1.2e-7 term, which absorbs them.
"""

from __future__ import annotations

import numpy as np

U32 = 2.0**-24
# glibc, Sleef (torch's vectorised kernels) and XLA's float32 cos/sin are within 1 ulp for any float32
# argument (full range reduction; measured <= 0.6 ulp for XLA and torch up to 4e4 rad). 2 leaves slack.
COS_SIN_ULPS = 2
# torch's float32 pow (Sleef's u10 kernels or libm powf): documented within 1 ulp.
POW_ULPS = 1


def exact_inv_freq(dim: int, theta: float) -> np.ndarray:
  """float64 frequencies theta^(-2i / dim) [dim / 2]; ~1e-15 relative error, exact for these tests."""
  return 1.0 / np.float64(theta) ** (np.arange(0, dim, 2, dtype=np.float64) / dim)


def exponents(dim: int) -> np.ndarray:
  """e_i = 2i / dim [dim / 2], the exponents of theta^-e_i."""
  return np.arange(0, dim, 2, dtype=np.float64) / dim


def ours_table_bound(angles: np.ndarray) -> np.ndarray:
  """Bound on |cos_ours - cos_exact| (and sin) for exact angles p * inv (any shape), see module doc."""
  return 2 * U32 * np.abs(angles) + COS_SIN_ULPS * U32


def torch_inv_freq_bound(dim: int, theta: float) -> np.ndarray:
  """Bound on |inv_torch - inv_exact| [dim / 2] for torch's float32 formula, see module doc."""
  return (np.log(theta) * exponents(dim) + 2 * POW_ULPS + 1) * U32 * exact_inv_freq(dim, theta)


def torch_table_bound(angles: np.ndarray, slot_exponents: np.ndarray, theta: float) -> np.ndarray:
  """Bound on |cos_torch - cos_exact| for exact angles [..., F] whose slots have `slot_exponents` [F]."""
  relative = np.log(theta) * slot_exponents + 2 * POW_ULPS + 2
  return relative * U32 * np.abs(angles) + COS_SIN_ULPS * U32
