import numpy as np
import pytest

from synthkit.analyse.geometry import (
    auc,
    camera_matrix,
    detect_segments,
    direction_errors,
    estimate_vps,
    estimate_vps_uncalibrated,
    horizon_error,
    measures,
)
from synthkit.analyse.vanish import analyse_image

W, H, F = 640, 480, 600.0


def rotation(yaw_deg: float, pitch_deg: float) -> np.ndarray:
    y, p = np.radians(yaw_deg), np.radians(pitch_deg)
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    return rx @ ry


def render_box(R: np.ndarray, seed: int = 0) -> np.ndarray:
    """A grey room seen from inside: many edges along the three axes of R, drawn with OpenCV."""
    import cv2

    rng = np.random.default_rng(seed)
    K = camera_matrix(F, ((W - 1) / 2, (H - 1) / 2))
    image = np.full((H, W, 3), 90, np.uint8)
    drawn = 0
    while drawn < 60:
        axis = drawn % 3
        start = rng.uniform(-4, 4, 3)
        start[2] = rng.uniform(4, 12)
        end = start + R[:, axis] * rng.uniform(1.5, 4)
        a, b = K @ start, K @ end
        if a[2] <= 0.5 or b[2] <= 0.5:
            continue
        p, q = (a[:2] / a[2]).round().astype(int), (b[:2] / b[2]).round().astype(int)
        cv2.line(image, tuple(int(v) for v in p), tuple(int(v) for v in q), (230, 230, 230), 3, cv2.LINE_AA)
        drawn += 1
    return image


@pytest.mark.parametrize("yaw,pitch", [(30, 10), (-20, -5), (45, 0)])
def test_rendered_room_gives_its_vanishing_points(yaw, pitch):
    R = rotation(yaw, pitch)
    image = render_box(R)
    result = analyse_image(image, 1, F, ((W - 1) / 2, (H - 1) / 2))
    assert result.found
    assert direction_errors(result.directions, R.T).max() < 1.0  # degrees
    assert abs(result.directions[result.vertical] @ R[:, 1]) > 0.999  # the vertical VP is the y axis
    truth = np.cross(*(camera_matrix(F, ((W - 1) / 2, (H - 1) / 2)) @ R[:, i] for i in (0, 2)))
    truth = truth / np.linalg.norm(truth[:2])
    assert horizon_error(result.horizon(), truth, W, H) < 0.01


def test_uncalibrated_estimates_the_focal_length_and_horizon():
    R = rotation(35, 8)
    result = analyse_image(render_box(R, seed=1), 1)
    assert result.found and result.focal_estimated
    assert 0.8 * F < result.focal < 1.25 * F
    truth = np.cross(*(camera_matrix(F, ((W - 1) / 2, (H - 1) / 2)) @ R[:, i] for i in (0, 2)))
    assert horizon_error(result.horizon(), truth / np.linalg.norm(truth[:2]), W, H) < 0.02


def test_blank_image_gives_a_clean_no_lines_result():
    result = analyse_image(np.full((32, 32, 3), 128, np.uint8), 8)
    assert not result.found and len(result.segments) == 0 and result.horizon() is None
    m = measures(result, 32, 32)
    assert m["n_segments"] == 0 and np.isnan(m["vp_share"])


def test_segments_are_returned_in_the_image_own_pixels():
    import cv2

    image = np.zeros((32, 32), np.uint8)
    cv2.rectangle(image, (8, 8), (24, 24), 255, -1)
    segments = detect_segments(image, upsample=8)
    assert len(segments) >= 4 and segments.min() > 5 and segments.max() < 27


def test_measures_of_a_manhattan_scene():
    R = rotation(25, 5)
    result, score = estimate_vps(detect_segments(render_box(R)), F, ((W - 1) / 2, (H - 1) / 2))
    m = measures(result, W, H)
    assert m["vp_share"] > 0.8 and m["orthogonality_deg"] < 1.5 and m["intersection_spread_deg"] < 2
    assert score > 0


def test_auc_and_errors():
    assert auc(np.zeros(5), 0.25) == pytest.approx(1.0, abs=1e-3)
    assert auc(np.full(5, 1.0), 0.25) == 0.0
    assert auc(np.array([0.125, np.inf]), 0.25) == pytest.approx(0.25, abs=0.01)
    line = np.array([0.0, 1.0, -100.0])
    assert horizon_error(line, np.array([0.0, 1.0, -148.0]), W, H) == pytest.approx(0.1)
    assert horizon_error(None, line, W, H) == float("inf")
    assert direction_errors(np.eye(3), np.eye(3)).max() < 1e-6
    assert estimate_vps_uncalibrated(np.zeros((0, 4)), W, H).found is False
