"""Which natural calibration kinds describe an image file, from how the file stores its pixels.

A detector's natural calibration photos come in *kinds* ("natural", "natural:jpeg:quality=75", ...: the pixel
transforms a natural photo went through, `puface.defenses` specs joined by "+"). Its default threshold is the
highest of the per-kind thresholds, since a photo's history is unknown. Some ways of storing a photo make natural
photos score like cloaks under the purifier: JPEG with full-resolution colour (4:4:4) at a lower quality, where
colour blocks stay; a palette (8-bit PNG, GIF colours). A file says how it is stored (`io.images.storage_of`:
"jpeg:quality=Q,subsampling=S", "palette"), so a chip stored that way can be judged against natural photos stored
the same way: *storage kinds* (`CloakDetector.calibrate(storage_kinds=)`, `[augment] storage_variants` of a
detector recipe) are calibration kinds that do not count for the default threshold but raise the threshold of a
chip whose storage they describe (`CloakDetector.threshold(storage=)`; never below the default).

The kinds that describe a storage are those whose *last* step is that storage: a JPEG kind of the same
subsampling (4:2:0 when the kind does not say, as Pillow and libjpeg encode) at the highest calibrated quality not
above the file's (JPEG artefacts grow as the quality falls, so the nearest lower quality is the cautious one; a file
up to `JPEG_QUALITY_SLACK` below the lowest calibrated quality takes that one), or the palette kinds. Lossless files,
storages no kind describes, photos cut by `--align` and images of another size than the detector's chips (resampled
before scoring) get the default threshold.
"""

from __future__ import annotations

from ..io.images import jpeg_storage
from ..utils.errors import PufaceError

__all__ = [
    "parse_storage",
    "last_step",
    "kinds_for_storage",
    "storage_of_kind",
    "is_storage_kind",
    "JPEG_QUALITY_SLACK",
    "describe",
]

#: A JPEG file below its subsampling's lowest calibrated quality is judged by that quality's kinds when it is at most
#: this much below (JPEG artefacts grow as the quality falls, so a file far below the calibrated ones gets the default).
JPEG_QUALITY_SLACK = 5


def _params(text: str) -> dict[str, str]:
    out = {}
    for part in text.split(","):
        if part:
            k, sep, v = part.partition("=")
            if not sep:
                raise PufaceError(f"storage {text!r}: expected key=value parts")
            out[k.strip()] = v.strip()
    return out


def parse_storage(storage: str) -> tuple[str, dict[str, str]]:
    """("jpeg", {"quality": "75", "subsampling": "4:2:0"}) / ("palette", {}) / ("", {}) for a storage string."""
    storage = (storage or "").strip()
    if not storage:
        return "", {}
    name, _, rest = storage.partition(":")
    return name, _params(rest)


def last_step(kind: str) -> tuple[str, dict[str, str]]:
    """The last pixel transform of a calibration kind ("natural:noise:sigma=0.008+jpeg:quality=95" ->
    ("jpeg", {"quality": "95"})); ("", {}) for "natural" as it is."""
    _, _, steps = kind.partition(":")
    if not steps:
        return "", {}
    name, _, rest = steps.split("+")[-1].partition(":")
    return name, _params(rest)


def _jpeg_kind(params: dict[str, str]) -> tuple[int, str] | None:
    if float(params.get("scale", "1")) != 1.0:
        return None  # encoded at another size and resized back: not a chip stored as JPEG
    return int(params.get("quality", "75")), params.get("subsampling", "4:2:0")


def kinds_for_storage(kind_names: list[str], storage: str) -> list[str] | None:
    """The calibration kinds whose last step is `storage` (see the module docstring), or None when the default
    threshold applies (no storage, or no kind describes it)."""
    name, params = parse_storage(storage)
    if name == "palette":
        kinds = [k for k in kind_names if last_step(k)[0] == "palette"]
        return kinds or None
    if name != "jpeg":
        return None
    quality, sub = int(params.get("quality", "0")), params.get("subsampling", "")
    matched = []
    for k in kind_names:
        step, p = last_step(k)
        jk = _jpeg_kind(p) if step == "jpeg" else None
        if jk is not None and jk[1] == sub:
            matched.append((jk[0], k))
    if not matched:
        return None
    below = [q for q, _ in matched if q <= quality]
    lowest = min(q for q, _ in matched)
    if not below and quality < lowest - JPEG_QUALITY_SLACK:
        return None
    use = max(below) if below else lowest
    return [k for q, k in matched if q == use]


def storage_of_kind(kind: str) -> str:
    """The storage string a kind's last step makes
    ("natural:jpeg:quality=75" -> "jpeg:quality=75,subsampling=4:2:0")."""
    step, params = last_step(kind)
    if step == "jpeg":
        return jpeg_storage(params.get("quality", "75"), params.get("subsampling", "4:2:0"))
    return step


def is_storage_kind(kind: str) -> bool:
    """Whether `kind` can be a storage kind: its last step makes a storage some kind describes (a JPEG at the chip's
    size, a palette)."""
    return kinds_for_storage([kind], storage_of_kind(kind)) is not None


def describe(storage: str) -> str:
    """Words for a storage string: "JPEG q75 4:2:0", "palette", "lossless or unknown"."""
    name, params = parse_storage(storage)
    if name == "jpeg":
        return f"JPEG q{params.get('quality', '?')} {params.get('subsampling', '')}".strip()
    return name or "lossless or unknown"
