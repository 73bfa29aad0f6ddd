"""Projective geometry of an image: line segments (OpenCV's LSD), Manhattan vanishing points by a
joint-triplet RANSAC with a refit, the horizon, and measures of how consistent the lines are.

Pure functions on arrays; `synthkit.analyse.vanish` runs them over stores and the York Urban ground truth.
Coordinates are 0-based pixels, x right, y down. A vanishing point is a homogeneous pixel point
K d for a unit direction d in the camera frame, so points at infinity need no special case.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core.config import SEED

ANGLE_DEG = 1.5
RANSAC_ITERS = 1500
FOCAL_GRID = np.geomspace(0.45, 2.5, 9)


@dataclass
class VPResult:
    """Detected segments, the three vanishing directions and what follows from them."""

    segments: np.ndarray
    focal: float
    principal_point: tuple[float, float]
    directions: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    assignment: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    vertical: int = -1
    focal_estimated: bool = False

    @property
    def found(self) -> bool:
        return len(self.directions) == 3

    @property
    def K(self) -> np.ndarray:
        return camera_matrix(self.focal, self.principal_point)

    def vps(self) -> np.ndarray:
        """Vanishing points as unit-norm homogeneous pixel points (3, 3)."""
        points = self.directions @ self.K.T
        return points / np.linalg.norm(points, axis=1, keepdims=True)

    def horizon(self) -> np.ndarray | None:
        """(a, b, c) of a*x + b*y + c = 0 through the two non-vertical VPs, (a, b) unit and b > 0."""
        if not self.found:
            return None
        v = self.vps()
        h1, h2 = (v[i] for i in range(3) if i != self.vertical)
        line = np.cross(h1, h2)
        line = line / np.linalg.norm(line[:2])
        return -line if line[1] < 0 else line


def camera_matrix(focal: float, principal_point: tuple[float, float]) -> np.ndarray:
    """K for square pixels and no skew."""
    return np.array([[focal, 0, principal_point[0]], [0, focal, principal_point[1]], [0, 0, 1.0]])


def detect_segments(image: np.ndarray, upsample: float = 1.0, min_length: float = 0.0) -> np.ndarray:
    """LSD segments (N, 4: x1, y1, x2, y2) in the image's own pixels, found on an upsampled copy if asked."""
    import cv2

    gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if upsample != 1:
        gray = cv2.resize(gray, None, fx=upsample, fy=upsample, interpolation=cv2.INTER_CUBIC)
    lines = cv2.createLineSegmentDetector().detect(gray)[0]
    if lines is None:
        return np.zeros((0, 4))
    segments = lines.reshape(-1, 4).astype(np.float64)  # OpenCV 4.x gives (N, 1, 4), 5.x gives (N, 4)
    segments = (segments + 0.5) / upsample - 0.5 if upsample != 1 else segments
    return segments[segment_lengths(segments) >= min_length]


def segment_lengths(segments: np.ndarray) -> np.ndarray:
    return np.hypot(segments[:, 2] - segments[:, 0], segments[:, 3] - segments[:, 1])


def _normals(segments: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Unit normals of the interpretation planes (camera centre and segment) of each segment."""
    Kinv = np.linalg.inv(K)
    ones = np.ones(len(segments))
    p1 = np.stack([segments[:, 0], segments[:, 1], ones], 1) @ Kinv.T
    p2 = np.stack([segments[:, 2], segments[:, 3], ones], 1) @ Kinv.T
    n = np.cross(p1, p2)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def angle_sines(segments: np.ndarray, points: np.ndarray) -> np.ndarray:
    """|sin| of the angle between each segment and the line from its midpoint to each VP: (..., N).

    `points` are homogeneous pixel points (..., 3); points at infinity work as well."""
    mid = (segments[:, :2] + segments[:, 2:]) / 2
    u = segments[:, 2:] - segments[:, :2]
    u = u / np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)
    pts = points[..., None, :]
    t = pts[..., :2] - pts[..., 2:3] * mid
    cross = np.abs(u[:, 0] * t[..., 1] - u[:, 1] * t[..., 0])
    return cross / np.maximum(np.linalg.norm(t, axis=-1), 1e-12)


def _refit(normals: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The direction most nearly in all the weighted interpretation planes (least squares)."""
    m = (normals * weights[:, None]).T @ normals
    return np.linalg.eigh(m)[1][:, 0]


def _ransac(
    segments: np.ndarray, K: np.ndarray, iters: int, sin_thr: float, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """Best Manhattan triplet (3, 3) of directions by inlier length, and its score."""
    n = _normals(segments, K)
    w = segment_lengths(segments)
    p = w / w.sum()
    i, j, k = (rng.choice(len(segments), size=iters, p=p) for _ in range(3))
    d1 = np.cross(n[i], n[j])
    d2 = np.cross(n[k], d1)
    d3 = np.cross(d1, d2)
    triplets = np.stack([d1, d2, d3], 1)
    norms = np.linalg.norm(triplets, axis=2, keepdims=True)
    valid = (norms[:, :, 0] > 1e-9).all(1)
    triplets = triplets[valid] / norms[valid]
    if len(triplets) == 0:
        return np.zeros((0, 3)), 0.0
    best, best_score = None, -1.0
    for chunk in range(0, len(triplets), 128):
        hyp = triplets[chunk : chunk + 128]
        sines = angle_sines(segments, hyp @ K.T)  # (H, 3, N)
        scores = ((sines.min(1) < sin_thr) * w).sum(1)
        h = int(scores.argmax())
        if scores[h] > best_score:
            best, best_score = hyp[h], float(scores[h])
    return best, best_score


def _assign(segments: np.ndarray, directions: np.ndarray, K: np.ndarray, sin_thr: float) -> np.ndarray:
    """Index of the VP each segment supports, or -1."""
    sines = angle_sines(segments, directions @ K.T)  # (3, N)
    best = sines.argmin(0)
    return np.where(sines.min(0) < sin_thr, best, -1)


def estimate_vps(
    segments: np.ndarray,
    focal: float,
    principal_point: tuple[float, float],
    angle_deg: float = ANGLE_DEG,
    iters: int = RANSAC_ITERS,
    seed: int = SEED,
    refit_rounds: int = 3,
) -> tuple[VPResult, float]:
    """Manhattan VPs for a known focal length: joint-triplet RANSAC, then per-VP least-squares refits.

    Returns the result and its inlier score (total length of consistent segments)."""
    result = VPResult(segments, float(focal), tuple(principal_point))
    if len(segments) < 3:
        return result, 0.0
    K = result.K
    sin_thr = np.sin(np.radians(angle_deg))
    directions, score = _ransac(segments, K, iters, sin_thr, np.random.default_rng(seed))
    if len(directions) < 3:
        return result, 0.0
    n, w = _normals(segments, K), segment_lengths(segments)
    for _ in range(refit_rounds):
        assignment = _assign(segments, directions, K, sin_thr)
        refit = []
        for v in range(3):
            members = assignment == v
            refit.append(_refit(n[members], w[members]) if members.sum() >= 2 else directions[v])
        refit = np.array(refit)
        directions = refit * np.sign(refit[:, 2:3] + 1e-12)
    result.directions = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    result.assignment = _assign(segments, result.directions, K, sin_thr)
    result.vertical = int(np.abs(result.directions[:, 1]).argmax())
    return result, float((w * (result.assignment >= 0)).sum())


def estimate_vps_uncalibrated(
    segments: np.ndarray,
    width: int,
    height: int,
    angle_deg: float = ANGLE_DEG,
    iters: int = RANSAC_ITERS,
    seed: int = SEED,
) -> VPResult:
    """No K: principal point at the image centre; the focal length is the one (on a grid of
    0.45-2.5 x the larger side, then a finer grid around the best) whose best Manhattan triplet has the most support."""
    pp = ((width - 1) / 2, (height - 1) / 2)
    size = max(width, height)
    if len(segments) < 3:
        return VPResult(segments, float(size), pp, focal_estimated=True)
    scores = [estimate_vps(segments, f * size, pp, angle_deg, iters // 4, seed, refit_rounds=1)[1] for f in FOCAL_GRID]
    best = int(np.argmax(scores))
    lo, hi = FOCAL_GRID[max(best - 1, 0)], FOCAL_GRID[min(best + 1, len(FOCAL_GRID) - 1)]
    fine = np.geomspace(lo, hi, 5)
    fine_scores = [estimate_vps(segments, f * size, pp, angle_deg, iters // 4, seed, refit_rounds=1)[1] for f in fine]
    result, _ = estimate_vps(segments, fine[int(np.argmax(fine_scores))] * size, pp, angle_deg, iters, seed)
    result.focal_estimated = True
    return result


def measures(result: VPResult, width: int, height: int, max_pairs: int = 2000, seed: int = 0) -> dict[str, float]:
    """Per-image measures: segment count and length (over the image diagonal), share of length consistent
    with the VPs, spread of the pairwise intersections of each VP's segments around it (median angle on
    the sphere, degrees), and the mean departure of the three VP directions from orthogonality (degrees)."""
    seg = result.segments
    lengths = segment_lengths(seg)
    diag = float(np.hypot(width, height))
    out = {
        "n_segments": int(len(seg)),
        "mean_length": float(lengths.mean() / diag) if len(seg) else float("nan"),
        "total_length": float(lengths.sum() / diag),
        "vp_share": float("nan"),
        "intersection_spread_deg": float("nan"),
        "orthogonality_deg": float("nan"),
        "focal": result.focal,
    }
    if not result.found:
        return out
    out["vp_share"] = float(lengths[result.assignment >= 0].sum() / lengths.sum())
    d = result.directions
    cosines = [abs(float(d[a] @ d[b])) for a, b in ((0, 1), (0, 2), (1, 2))]
    out["orthogonality_deg"] = float(np.degrees(np.mean([np.arcsin(min(1.0, c)) for c in cosines])))
    n = _normals(seg, result.K)
    rng = np.random.default_rng(seed)
    angles = []
    for k in range(3):
        members = np.flatnonzero(result.assignment == k)
        if len(members) < 2:
            continue
        pairs = rng.choice(members, size=(max_pairs // 3, 2))
        pairs = pairs[pairs[:, 0] != pairs[:, 1]]
        x = np.cross(n[pairs[:, 0]], n[pairs[:, 1]])
        norms = np.linalg.norm(x, axis=1)
        x = x[norms > 1e-9] / norms[norms > 1e-9, None]
        angles.append(np.degrees(np.arccos(np.clip(np.abs(x @ d[k]), 0, 1))))
    if angles:
        out["intersection_spread_deg"] = float(np.median(np.concatenate(angles)))
    return out


def horizon_error(pred: np.ndarray | None, truth: np.ndarray, width: int, height: int) -> float:
    """Largest vertical distance between two horizon lines over the image width, as a share of its height."""
    if pred is None or abs(pred[1]) < 1e-12:
        return float("inf")
    ys = [(-(line[0] * x + line[2]) / line[1]) for line in (pred, truth) for x in (0, width - 1)]
    return max(abs(ys[0] - ys[2]), abs(ys[1] - ys[3])) / height


def direction_errors(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Angle (degrees) from each true direction to the closest predicted one (sign-agnostic)."""
    if len(pred) == 0:
        return np.full(len(truth), 90.0)
    cos = np.abs(truth @ pred.T).max(1)
    return np.degrees(np.arccos(np.clip(cos, 0, 1)))


def auc(errors: np.ndarray, limit: float) -> float:
    """Area under the cumulative error curve up to `limit`, normalised to [0, 1] (as in the VP literature)."""
    errors = np.sort(np.asarray(errors, dtype=float))
    grid = np.linspace(0, limit, 1001)
    cdf = np.searchsorted(errors, grid, side="right") / max(len(errors), 1)
    return float(np.trapezoid(cdf, grid) / limit)


LENGTH_BINS = np.geomspace(0.005, 1.0, 7)  # segment length over the image diagonal


def line_features(result: VPResult, width: int, height: int, m: dict[str, float] | None = None) -> np.ndarray:
    """Line-segment statistics of one image, for telling real from generated scenes (after Sarkar et al., CVPR
    2024): histograms of segment length (6 bins) and orientation (8 bins), the segment count (log), the share of
    length supporting the VPs, the spread of their intersections, and whether three VPs were found."""
    seg = result.segments
    if len(seg) == 0:
        return np.concatenate([np.zeros(14), [0.0, 0.0, 90.0, 0.0]])
    lengths = segment_lengths(seg) / float(np.hypot(width, height))
    length_hist = np.histogram(np.clip(lengths, LENGTH_BINS[0], LENGTH_BINS[-1]), LENGTH_BINS)[0] / len(seg)
    angles = np.arctan2(seg[:, 3] - seg[:, 1], seg[:, 2] - seg[:, 0]) % np.pi
    angle_hist = np.histogram(angles, 8, (0, np.pi), weights=lengths)[0] / lengths.sum()
    m = m if m is not None else measures(result, width, height)  # callers that have them pass them
    support = 0.0 if np.isnan(m["vp_share"]) else m["vp_share"]
    spread = 90.0 if np.isnan(m["intersection_spread_deg"]) else m["intersection_spread_deg"]
    return np.concatenate([length_hist, angle_hist, [np.log1p(len(seg)), support, spread, float(result.found)]])


def separability(real: np.ndarray, other: np.ndarray, seed: int = 0) -> float:
    """Cross-validated ROC AUC of a logistic regression telling `other`'s feature rows from `real`'s:
    0.5 means as real as real, 1 means always told apart."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([real, other])
    y = np.concatenate([np.zeros(len(real)), np.ones(len(other))])
    folds = min(5, len(real), len(other))
    if folds < 2:
        return float("nan")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return float(np.mean(cross_val_score(model, x, y, cv=cv, scoring="roc_auc")))
