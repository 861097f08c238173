"""Photo -> aligned face chips, each with the transform that puts it back."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..utils.errors import PufaceError
from .detect import Face, FaceDetector
from .geometry import ChipTemplate, ChipTransform, chip_transform, face_size, template_for_size
from .warp import extract_chip

PICKS = ("all", "largest", "center")


@dataclass
class AlignedFace:
    """A face chip cut from a photo.

    chip: uint8 RGB (size, size, 3); transform: where it lies in the photo; face: the detection;
    size_px: face size in photo pixels (see `geometry.face_size`); index: position in the photo's
    face list (detector order).
    """

    chip: np.ndarray
    transform: ChipTransform
    face: Face
    size_px: float
    index: int = 0

    def to_json(self) -> dict:
        return {
            "index": self.index,
            "box": [round(v, 2) for v in self.face.box],
            "landmarks": self.face.landmarks.round(2).tolist(),
            "score": round(self.face.score, 4),
            "detector": self.face.detector,
            **({"turned": self.face.turn} if self.face.turn else {}),
            "face_px": round(self.size_px, 2),
            "transform": self.transform.to_json(),
        }


@dataclass
class PhotoFaces:
    """What alignment found in one photo: `faces` kept (chips cut), `too_small` (face sizes in px
    of faces below the minimum), `found` = every detection, and `turn`: the degrees clockwise the photo
    was turned to find them (0: upright; `FaceDetector` rotations; weak upright faces beside them keep `Face.turn` 0).
    """

    faces: list[AlignedFace] = field(default_factory=list)
    too_small: list[float] = field(default_factory=list)
    found: int = 0
    turn: int = 0

    def turn_note(self) -> str:
        """"face found with the photo turned N degrees clockwise" when it was (a sideways or upside-down photo),
        else ""."""
        return f"face found with the photo turned {self.turn} degrees clockwise" if self.turn else ""

    def reason_if_empty(self, min_face: float) -> str:
        if self.found == 0:
            return "no face found"
        # rounded down: a 39.6 px face read "face smaller than 40 px (found 1: 40 px)"
        sizes = ", ".join(f"{math.floor(s * 10) / 10:g}" for s in sorted(self.too_small, reverse=True))
        return f"face smaller than {min_face:g} px (found {self.found}: {sizes} px)"


class FaceAligner:
    """Detect faces, fit 5-point landmarks, cut chips.

    Args:
        template: a `ChipTemplate` or a chip size (150 -> dlib 150 px padding 0.25, 112 -> ArcFace 112).
        detector: a `FaceDetector` (default: HOG upsampled once, CNN fallback).
        pick: "all" faces, the "largest", or the one closest to the photo "center".
        min_face: faces smaller than this (photo pixels, see `geometry.face_size`) are not used.
    """

    def __init__(
        self,
        template: ChipTemplate | int = 150,
        detector: FaceDetector | None = None,
        pick: str = "all",
        min_face: float = 40.0,
    ):
        if pick not in PICKS:
            raise PufaceError(f"unknown face choice {pick!r}; choose one of: {', '.join(PICKS)}")
        if not 0 <= min_face < float("inf"):  # nan too: it kept every face, however small
            raise PufaceError(f"min_face must be a number >= 0, got {min_face}")
        self.template = template if isinstance(template, ChipTemplate) else template_for_size(int(template))
        self.detector = detector if detector is not None else FaceDetector()
        self.pick = pick
        self.min_face = float(min_face)

    @property
    def config(self) -> dict:
        return {
            "template": self.template.describe(),
            "pick": self.pick,
            "min_face": self.min_face,
            **self.detector.config,
        }

    def faces_for(self, image: np.ndarray, faces: list[Face]) -> PhotoFaces:
        """Cut chips for given detections (used by `align`; also for landmarks from elsewhere)."""
        res = PhotoFaces(found=len(faces), turn=faces[0].turn if faces else 0)
        cands = []
        for i, f in enumerate(faces):
            s = face_size(f.landmarks)
            if s < self.min_face:
                res.too_small.append(s)
            else:
                cands.append((i, f, s))
        if cands and self.pick == "largest":
            cands = [max(cands, key=lambda c: c[2])]
        elif cands and self.pick == "center":
            h, w = image.shape[:2]
            mid = np.array([w / 2.0, h / 2.0])
            cands = [min(cands, key=lambda c: float(np.linalg.norm(c[1].center - mid)))]
        for i, f, s in cands:
            tf = chip_transform(f.landmarks, self.template)
            res.faces.append(AlignedFace(extract_chip(image, tf), tf, f, s, i))
        return res

    def align(self, image: np.ndarray) -> PhotoFaces:
        """Detect and cut the chips of uint8 RGB `image` (H, W, 3)."""
        return self.faces_for(image, self.detector.detect(image))
