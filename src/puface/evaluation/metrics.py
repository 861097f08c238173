"""Evaluation metrics: FaceCure's attack success rate and normal accuracy, and summaries over users.
(Image quality, PSNR and SSIM, lives in `puface.utils.metrics`.)

Definitions (FaceCure section 5; PuFace calls the cloak's success rate ASR):

* ASR = share of the protected user's clean test images that the trained model does NOT classify
  as the user (1.0 = the cloak fully protects the user).
* normal accuracy = top-1 accuracy on the clean test images of every other identity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Hashable, Iterable, Sequence

import numpy as np

from ..utils.labels import plain_label

#: Identity labels, one per image: a sequence, or a 1-D numpy array (object dtype: the data sets' `labels`); the
#: functions below take a 1-D torch tensor too.
Labels = Sequence[Hashable] | np.ndarray


def _labels(predicted: Any, true: Any) -> tuple[np.ndarray, np.ndarray]:
    """predicted and true labels as object arrays of plain values, one per image (a torch tensor on any device
    too); labels of another count or shape (scores or logits given for labels) are a ValueError saying so."""
    p, t = (np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=object)
            for x in (predicted, true))
    if p.shape != t.shape:
        if len(p) != len(t):
            raise ValueError(f"predicted and true labels differ in length ({len(p)} vs {len(t)})")
        raise ValueError(f"predicted and true labels differ in shape ({p.shape} vs {t.shape}); give one label per "
                         "image (scores or logits (N, classes): their argmax over dim 1)")
    return p, t


def attack_success_rate(predicted: Labels, true: Labels, user: Hashable) -> float:
    """Share (0..1) of the user's test images (true == user) predicted as someone else. NaN if none.
    Labels: one per image (sequences, numpy arrays or torch tensors); `user` may be a 0-d tensor."""
    p, t = _labels(predicted, true)
    user = plain_label(user)
    mine = t == user
    if not mine.any():
        return float("nan")
    return float(np.mean(p[mine] != user))


def normal_accuracy(predicted: Labels, true: Labels, user: Hashable | None) -> float:
    """Top-1 accuracy (0..1) on the test images of every identity except `user`. NaN if none."""
    p, t = _labels(predicted, true)
    user = plain_label(user)
    others = t != user if user is not None else np.ones(len(t), dtype=bool)
    if not others.any():
        return float("nan")
    return float(np.mean(p[others] == t[others]))


def protocol_scores(predicted: Labels, true: Labels, user: Hashable) -> dict[str, float | int]:
    """{asr, normal_acc, user_acc, n_user_test, n_other_test} for one protected user."""
    t, user = _labels(true, true)[1], plain_label(user)
    asr = attack_success_rate(predicted, true, user)
    return {
        "asr": asr,
        "normal_acc": normal_accuracy(predicted, true, user),
        "user_acc": 1.0 - asr if not math.isnan(asr) else float("nan"),
        "n_user_test": int(np.sum(t == user)),
        "n_other_test": int(np.sum(t != user)),
    }


#: PSNR (dB) recorded for an image identical to its reference (its true PSNR is infinite): the image-quality
#: summaries count such images apart instead of averaging the cap with real values
PSNR_CAP = 99.0


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (ddof=1; 0 for one value) and count of finite values."""

    mean: float
    std: float
    n: int

    def format(self, percent: bool = True, digits: int = 1) -> str:
        if self.n == 0:
            return "-"
        k = 100.0 if percent else 1.0
        if self.n == 1:
            return f"{self.mean * k:.{digits}f}"
        return f"{self.mean * k:.{digits}f} ± {self.std * k:.{digits}f}"


def summarise(values: Iterable[float]) -> Summary:
    """Summary of the finite values (NaNs, e.g. a user without test images, are left out)."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(float(x))], dtype=np.float64)
    if v.size == 0:
        return Summary(float("nan"), float("nan"), 0)
    return Summary(float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size))


__all__ = [
    "attack_success_rate", "normal_accuracy", "protocol_scores", "Summary", "summarise", "PSNR_CAP",
]
