"""Deterministic random fields as functions of canvas coordinates (tiles cut anywhere agree exactly)."""
from __future__ import annotations

import hashlib
import math

import numpy as np


def mix64(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic is intended)."""
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def hash_u01(ix: np.ndarray, iy: np.ndarray, salt: int) -> np.ndarray:
    """Uniform [0, 1) value attached to each integer lattice point (ix, iy), for one `salt`."""
    ix = np.asarray(ix, dtype=np.int64).view(np.uint64)
    iy = np.asarray(iy, dtype=np.int64).view(np.uint64)
    with np.errstate(over="ignore"):
        h = mix64(ix * np.uint64(0x9E3779B97F4A7C15) + np.uint64(salt & 0xFFFFFFFFFFFFFFFF))
        h = mix64(h ^ (iy * np.uint64(0xC2B2AE3D27D4EB4F)))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def salt_of(seed: int, name: str) -> int:
    """64-bit salt of one named random field for one seed."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little")


def bspline_weights(t: np.ndarray) -> np.ndarray:
    """Cubic B-spline weights of lattice nodes i-1..i+2 for fractional positions `t` (smooth noise)."""
    t2, t3 = t * t, t * t * t
    return np.stack([(1 - t) ** 3, 3 * t3 - 6 * t2 + 4, -3 * t3 + 3 * t2 + 3 * t + 1, t3], axis=-1) / 6.0


def keys_weights(t: np.ndarray) -> np.ndarray:
    """Keys cubic-convolution weights (a = -0.5) of nodes i-1..i+2: interpolating and sharp."""
    a = -0.5
    s = np.stack([1 + t, t, 1 - t, 2 - t], axis=-1)
    near = ((a + 2) * s - (a + 3)) * s * s + 1
    far = ((a * s - 5 * a) * s + 8 * a) * s - 4 * a
    return np.where(s <= 1, near, far)


# Standard deviation of B-spline value noise built on uniform [-1, 1] lattice values, averaged over
# positions; dividing by it gives fields of unit standard deviation.
_T = (np.arange(256) + 0.5) / 256
_NOISE_STD = math.sqrt(1 / 3) * float(np.mean(np.sum(bspline_weights(_T) ** 2, axis=-1)) ** 0.5) ** 2


def _lattice_weights(coords: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Index of lattice node i-1 and the B-spline weights of nodes i-1..i+2 for each coordinate."""
    g = coords / spacing
    i = np.floor(g)
    return i.astype(np.int64) - 1, bspline_weights(g - i).astype(np.float32)


def value_noise(xs: np.ndarray, ys: np.ndarray, spacing: float | tuple[float, float], salt: int
                 ) -> np.ndarray:
    """Smooth random field of unit standard deviation sampled on the grid ``ys x xs``.

    A deterministic function of canvas coordinates (lattice values hashed from their integer
    coordinates, cubic B-spline interpolation), so tiles cut anywhere agree exactly. The
    interpolation is separable: along x then along y.
    """
    sx, sy = spacing if isinstance(spacing, tuple) else (spacing, spacing)
    ix, wx = _lattice_weights(xs, sx)
    iy, wy = _lattice_weights(ys, sy)
    fx, fy = int(ix.min()), int(iy.min())
    lx = np.arange(fx, int(ix.max()) + 4)
    ly = np.arange(fy, int(iy.max()) + 4)
    lattice = (hash_u01(lx[None, :], ly[:, None], salt) * 2 - 1).astype(np.float32)
    if min(sx, sy) >= 8:
        # Few nodes: dense interpolation matrices and BLAS beat gathering.
        mx = np.zeros((xs.size, lx.size), dtype=np.float32)
        my = np.zeros((ys.size, ly.size), dtype=np.float32)
        for t in range(4):
            mx[np.arange(xs.size), ix - fx + t] = wx[:, t]
            my[np.arange(ys.size), iy - fy + t] = wy[:, t]
        out = my @ (lattice @ mx.T)
    else:
        rx, ry = ix - fx, iy - fy
        along_x = lattice[:, rx] * wx[:, 0]
        for t in range(1, 4):
            along_x += lattice[:, rx + t] * wx[:, t]
        out = along_x[ry] * wy[:, 0, None]
        for t in range(1, 4):
            out += along_x[ry + t] * wy[:, t, None]
    out *= np.float32(1 / _NOISE_STD)
    return out


def value_noise_points(px: np.ndarray, py: np.ndarray, spacing: float, salt: int) -> np.ndarray:
    """`value_noise` at scattered points (same field, evaluated point by point)."""
    gx, gy = np.asarray(px, float) / spacing, np.asarray(py, float) / spacing
    ix, iy = np.floor(gx), np.floor(gy)
    wx, wy = bspline_weights(gx - ix), bspline_weights(gy - iy)
    ix, iy = ix.astype(np.int64) - 1, iy.astype(np.int64) - 1
    out = np.zeros(gx.shape)
    for a in range(4):
        for b in range(4):
            out += wy[..., a] * wx[..., b] * (hash_u01(ix + b, iy + a, salt) * 2 - 1)
    return out / _NOISE_STD


def smoothstep(lo: float, hi: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0, 1)
    return t * t * (3 - 2 * t)

