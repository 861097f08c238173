"""Cloak detection: which photos carry a cloak, scored from what the purifier does to them.

    >>> import puface
    >>> det = puface.load_detector()                  # the shipped, calibrated detector  # doctest: +SKIP
    >>> scores = det.score(images)                    # (N,) higher = more likely cloaked  # doctest: +SKIP
    >>> det.is_cloaked(scores)                        # at the calibrated 1% false-positive rate # doctest: +SKIP
    >>> det.detect_folder("photos/", "scores.csv")    # a folder tree: scores CSV, per-identity summary # doctest: +SKIP

Modules: `detector` (features, score, calibration, the file format), `net` (the small CNN on the
purifier residual), `storage` (which calibration kinds judge a chip stored as JPEG or with a palette), `folder`
(`detect_folder`, `purify_folder_detected`: the folder jobs). Training and
calibrating a detector is `puface.training.detector`.
"""

from __future__ import annotations

from .detector import (
    DEFAULT_CONFIDENCE,
    DEFAULT_FPR,
    SHIPPED_DETECTORS,
    CloakDetector,
    DetectorConfig,
    default_detector_path,
    detector_path,
    allowed_above,
    load_detector,
    min_calibration_size,
    threshold_at_fpr,
)
from .net import ResidualNet, ResidualNetConfig

__all__ = [
    "CloakDetector",
    "DetectorConfig",
    "ResidualNet",
    "ResidualNetConfig",
    "load_detector",
    "default_detector_path",
    "detector_path",
    "threshold_at_fpr",
    "allowed_above",
    "min_calibration_size",
    "DEFAULT_FPR",
    "DEFAULT_CONFIDENCE",
    "SHIPPED_DETECTORS",
]
