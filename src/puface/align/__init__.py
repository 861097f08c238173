"""Face detection, 5-point alignment to chips with an invertible transform, and paste-back.

    from puface.align import FaceAligner, align_adapter
    faces = FaceAligner(150).align(image_uint8)      # chips + transforms
    process = align_adapter(chip_process, chip_size=150, no_face="copy")   # chip job -> photo job
"""

from .adapter import NO_FACE_ACTIONS, align_adapter
from .aligner import PICKS, AlignedFace, FaceAligner, PhotoFaces
from .detect import DETECTORS, Face, FaceDetector, import_dlib, require_alignment
from .geometry import (
    TEMPLATES,
    ChipTemplate,
    ChipTransform,
    arcface_template,
    chip_transform,
    dlib_template,
    face_size,
    fit_similarity,
    template_for_size,
)
from .warp import extract_chip, feather_mask, fill_off_photo, inside_photo_weight, paste_back, paste_delta

__all__ = [
    "PICKS",
    "AlignedFace",
    "FaceAligner",
    "PhotoFaces",
    "DETECTORS",
    "Face",
    "FaceDetector",
    "import_dlib",
    "require_alignment",
    "TEMPLATES",
    "ChipTemplate",
    "ChipTransform",
    "arcface_template",
    "chip_transform",
    "dlib_template",
    "face_size",
    "fit_similarity",
    "template_for_size",
    "extract_chip",
    "feather_mask",
    "fill_off_photo",
    "inside_photo_weight",
    "paste_delta",
    "paste_back",
    "align_adapter",
    "NO_FACE_ACTIONS",
]
