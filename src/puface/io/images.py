"""Robust image reading and atomic writing, used by every command.

`read_image` returns uint8 RGB (H, W, 3) with EXIF orientation applied, or raises `ImageReadError`
naming the file and the problem; it never hangs on hostile bytes and refuses images too large to
decode safely. `write_image` writes through a temporary file and a rename, so a crash never leaves
a half-written output.
"""

from __future__ import annotations

import errno
import io
import os
import re
import struct
import threading
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..utils.errors import ImageReadError, ImageWriteError, PufaceError
from ..utils.paths import create_temporary

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
#: Image files puface does not read (GIF: palette and animation frames; the rest: no Pillow codec or a raw
#: camera format). Folder jobs list them as failed instead of passing over them silently.
UNSUPPORTED_IMAGE_EXTENSIONS = (".gif", ".heic", ".heif", ".avif", ".jxl", ".jp2", ".j2k", ".ico", ".svg", ".psd",
                                ".dng", ".cr2", ".nef", ".arw")
#: "expected ..." in messages about inputs.
EXPECTED_IMAGES = f"expected {', '.join(IMAGE_EXTENSIONS[:-1])} or {IMAGE_EXTENSIONS[-1]} files"

#: Largest image decoded, in pixels (width * height). 100 MP is a 400 MB RGBA decode; larger images
#: are refused with a clear message. Override with $PUFACE_MAX_PIXELS.
DEFAULT_MAX_PIXELS = 100_000_000

_PIL_FORMATS = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".bmp": "BMP",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}

# Never decode truncated files silently as grey: we want an error.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def _suffix(path: str | Path) -> str:
    """`Path(path).suffix.lower()` without making a `Path` (a folder listing asks this of every file)."""
    return os.path.splitext(os.fspath(path))[1].lower()


def is_image_file(path: str | Path) -> bool:
    """True when the name ends with a supported extension (any case)."""
    return _suffix(path) in IMAGE_EXTENSIONS


def is_unsupported_image_file(path: str | Path) -> bool:
    """True for an image file puface does not read (`UNSUPPORTED_IMAGE_EXTENSIONS`, any case)."""
    return _suffix(path) in UNSUPPORTED_IMAGE_EXTENSIONS


def max_pixels() -> int:
    """The largest image decoded, in pixels: $PUFACE_MAX_PIXELS, else `DEFAULT_MAX_PIXELS`; a `PufaceError` for a value
    that is not a positive integer (folder jobs ask once before any file, so it is one line, not one per file)."""
    env = os.environ.get("PUFACE_MAX_PIXELS", "").strip()
    if not env:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(env.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise PufaceError(f"$PUFACE_MAX_PIXELS must be a positive whole number of pixels, got {env!r}")
    return value


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB. Alpha is composited on white; 16/32-bit and float scaled."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("RGBA", "LA", "RGBa", "La", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(im, dtype=np.float64)
        if mode.startswith("I;16"):
            a = a / 257.0  # 0..65535 -> 0..255
        elif mode == "I":
            # 32-bit integer: 16-bit data (most common: 16-bit PNG) or 8-bit data stored wide.
            a = a / 257.0 if a.max(initial=0) > 255 else a
        else:  # "F": float; [0,1] data is scaled, otherwise taken as 0..255
            finite = a[np.isfinite(a)]
            if finite.size and finite.max() <= 1.0 and finite.min() >= 0.0:
                a = a * 255.0
            a = np.nan_to_num(a, nan=0.0, posinf=255.0, neginf=0.0)
        g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([g, g, g], axis=-1), "RGB")
    # 1, L, P (no transparency), CMYK, YCbCr, LAB, HSV, ...
    return im.convert("RGB")


def _pixels(n: int) -> str:
    """A pixel count as said in messages: megapixels from 0.1 MP, else the count ("2500 pixels", not "0.0 MP")."""
    return f"{n / 1e6:.1f} MP" if n >= 100_000 else f"{n} pixels"


def _too_large(w: int | None, h: int | None, limit: int, pixels: int | None = None) -> str:
    """The message for an image of w x h (or only `pixels`, when Pillow's own check said so) over `limit` pixels."""
    size = f"{w}x{h} = {_pixels(w * h)}" if w is not None and h is not None else _pixels(pixels or 0)
    return f"image too large ({size} > {_pixels(limit)} limit; set PUFACE_MAX_PIXELS to allow)"


#: Pillow modes of grayscale images (written back as 8-bit L by `puface purify`; 1-bit, 16-bit and float become 8-bit).
GRAY_MODES = ("1", "L", "LA", "La", "I", "F") + tuple(m for m in Image.MODES if m.startswith("I;16"))
#: Pillow modes of images whose colours come from a palette (8-bit PNG, BMP, TIFF with a colour table).
PALETTE_MODES = ("P", "PA")
_ALPHA_MODES = ("RGBA", "LA", "RGBa", "La", "PA")

#: Chroma subsampling of a JPEG as `PIL.JpegImagePlugin.get_sampling` reports it.
_SAMPLING = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}
_REFERENCE_TABLES: list[np.ndarray] = []
_REFERENCE_LOCK = threading.Lock()


def _reference_tables() -> np.ndarray:
    """The luminance + chrominance quantisation tables of Pillow's (libjpeg's) encoder at qualities 1..100: int64
    (100, 128), row q - 1 for quality q."""
    with _REFERENCE_LOCK:
        if not _REFERENCE_TABLES:
            tile = Image.new("RGB", (8, 8))
            rows = []
            for q in range(1, 101):
                buf = io.BytesIO()
                tile.save(buf, format="JPEG", quality=q)
                with Image.open(buf) as im:
                    t = im.quantization  # type: ignore[attr-defined]  # JpegImageFile's; Image.open is typed ImageFile
                rows.append(np.concatenate([np.asarray(t[0]), np.asarray(t[1])]).astype(np.int64))
            _REFERENCE_TABLES.append(np.stack(rows))
        return _REFERENCE_TABLES[0]


def jpeg_settings(im: Image.Image) -> tuple[int, str] | None:
    """(quality, chroma subsampling) of an opened colour JPEG (or MPO: a camera's JPEG with more pictures in it), else
    None (not a JPEG, grey, CMYK, unknown sampling).

    quality (1..100) is the libjpeg (IJG) quality whose standard tables are nearest to the file's (sum of absolute
    differences), as `identify -verbose` estimates it: exact for files libjpeg, Pillow, OpenCV or ImageMagick wrote
    at a quality setting, an estimate for encoders with tables of their own (cameras, phones). subsampling: "4:2:0",
    "4:2:2" or "4:4:4"."""
    if getattr(im, "format", None) not in ("JPEG", "MPO") or getattr(im, "layers", 0) != 3 or im.mode != "RGB":
        return None
    from PIL import JpegImagePlugin

    sampling = _SAMPLING.get(JpegImagePlugin.get_sampling(im))
    tables = getattr(im, "quantization", None) or {}
    if sampling is None or 0 not in tables or 1 not in tables or len(tables[0]) != 64 or len(tables[1]) != 64:
        return None
    mine = np.concatenate([np.asarray(tables[0]), np.asarray(tables[1])]).astype(np.int64)
    # one array operation (a loop over the 100 tables took 0.4 ms, more than decoding a 150 px chip); argmin keeps
    # the first of equally near tables, the lowest quality, as the loop's min did
    quality = int(np.abs(_reference_tables() - mine).sum(axis=1).argmin()) + 1
    return quality, sampling


def jpeg_storage(quality: int | str, subsampling: str = "4:2:0") -> str:
    """The storage string of a colour JPEG (`storage_of`): "jpeg:quality=Q,subsampling=S"."""
    return f"jpeg:quality={quality},subsampling={subsampling}"


def storage_of(im: Image.Image) -> str:
    """How an opened image file stores its pixels, in the grammar of the pixel transforms that would make it
    (`puface.defenses`): "jpeg:quality=Q,subsampling=S" for a colour JPEG (`jpeg_settings`), "palette" for a
    palette image (`PALETTE_MODES`), "" otherwise (lossless colour, grey, or unknown)."""
    if im.mode in PALETTE_MODES:
        return "palette"
    js = jpeg_settings(im)
    return jpeg_storage(*js) if js else ""


def is_lossless_webp(data: bytes) -> bool:
    """True for the bytes of a lossless WebP file: its image bitstream is VP8L (lossy WebP is VP8), directly or inside
    an extended (VP8X) file."""
    if len(data) < 20 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return False
    pos = 12
    while pos + 8 <= len(data):
        tag = data[pos : pos + 4]
        if tag == b"VP8L":
            return True
        if tag == b"VP8 ":
            return False
        size = struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        pos += 8 + size + (size & 1)
    return False


def _alpha_of(im: Image.Image) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(alpha channel uint8 (H, W), the colour under it uint8 (H, W, 3), not composited) of an image that has an
    alpha channel, else (None, None)."""
    if im.mode in _ALPHA_MODES or (im.mode == "P" and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA"))
        return rgba[..., 3].copy(), rgba[..., :3].copy()
    return None, None


def open_image(path: str | Path, data: bytes | None = None) -> Image.Image:
    """Open and fully decode an image as an RGB Pillow image (EXIF orientation applied).

    Raises `ImageReadError` for missing, empty, truncated, corrupt, non-image or oversized files.
    """
    return _open(Path(path), data, False)[0]


def open_image_parts(path: str | Path, data: bytes | None = None, *, color: bool = False) -> tuple:
    """`open_image`, plus what writing the image back in its own mode needs: its alpha channel (uint8 (H, W),
    upright; None without one) and whether it is grayscale (`GRAY_MODES`). With `color`, a fourth item: the colour
    under the alpha channel (uint8 (H, W, 3), upright, not composited on white; None without alpha), which the RGB
    image (composited) no longer holds where alpha < 255. Refuses an animated or multi-page file (APNG, WebP, TIFF),
    whose output would keep only its first frame."""
    rgb, alpha, gray, under = _open(Path(path), data, True)
    return (rgb, alpha, gray, under) if color else (rgb, alpha, gray)


def read_image_bytes(path: str | Path) -> bytes:
    """The bytes of an image file, read once (decoders and metadata readers then share them); `ImageReadError` naming
    the file when it is missing, a broken link or a folder, or cannot be read (permissions, I/O)."""
    path = Path(path)
    try:
        if not path.exists():
            link = path.is_symlink()
            raise ImageReadError(path, f"broken link to {os.readlink(path)}, which does not exist" if link else
                                 "file not found")
        if path.is_dir():
            raise ImageReadError(path, "is a folder, not an image")
        return path.read_bytes()
    except OSError as e:
        raise ImageReadError(path, f"cannot read file ({e.strerror or e})") from None


def _open(
    path: Path, data: bytes | None, parts: bool
) -> tuple[Image.Image, np.ndarray | None, bool, np.ndarray | None]:
    if data is None:
        data = read_image_bytes(path)
    if len(data) == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    limit = max_pixels()
    # Pillow's own bomb check must not be stricter than ours (its error fires at 2 x MAX_IMAGE_PIXELS).
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < limit:
        Image.MAX_IMAGE_PIXELS = limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.filterwarnings("error", message=".*[Tt]runcated.*")
            im: Image.Image = Image.open(io.BytesIO(data))
            w, h = im.size
            if w <= 0 or h <= 0:
                raise ImageReadError(path, f"invalid image size {w}x{h}")
            if w * h > limit:
                raise ImageReadError(path, _too_large(w, h, limit))
            frames = getattr(im, "n_frames", 1)
            # a folder job's output would silently keep the first frame only; a camera's MPO JPEG (a photo plus
            # previews or a depth map) is one picture
            if parts and frames > 1 and im.format != "MPO":
                raise ImageReadError(path, f"animated or multi-page image ({frames} frames): puface reads one picture "
                                           "per file; save each frame as its own PNG or JPEG first")
            im.load()
            im = ImageOps.exif_transpose(im) or im
            rgb = _to_rgb(im)
            rgb.load()
            alpha, under = _alpha_of(im) if parts else (None, None)
            gray = im.mode in GRAY_MODES
    except ImageReadError:
        raise
    except Image.DecompressionBombError as e:  # Pillow's own check, at twice our limit, in Image.open: its message
        # ("Image size (N pixels) exceeds limit of 2*L pixels, could be decompression bomb DOS attack.") told of a
        # limit the user never set; say ours
        said = re.search(r"\((\d+) pixels\)", str(e))
        raise ImageReadError(path, _too_large(None, None, limit, int(said.group(1))) if said else
                             f"image too large ({e}; set PUFACE_MAX_PIXELS to allow)") from None
    except UnidentifiedImageError:
        raise ImageReadError(path, "not an image, or a format Pillow cannot read") from None
    except (
        OSError,
        SyntaxError,
        ValueError,
        TypeError,
        IndexError,
        KeyError,
        EOFError,
        struct.error,
        ZeroDivisionError,
        MemoryError,
        RuntimeError,
        UserWarning,
    ) as e:
        msg = str(e) or type(e).__name__
        if "truncated" in msg.lower():
            msg = f"truncated or incomplete file ({msg})"
        else:
            msg = f"corrupt image ({msg})"
        raise ImageReadError(path, msg) from None
    return rgb, alpha, gray, under


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 RGB (H, W, 3). Raises `ImageReadError` with a clear reason."""
    return np.asarray(open_image(path), dtype=np.uint8).copy()


def image_info(path: str | Path) -> tuple[int, int, str]:
    """(width, height, format) after EXIF orientation, reading only the header where possible."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            w, h = im.size
            orient = im.getexif().get(0x0112, 1) if hasattr(im, "getexif") else 1
            fmt = im.format or ""
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(path, f"not a readable image ({e})") from None
    if orient in (5, 6, 7, 8):
        w, h = h, w
    return w, h, fmt


def pil_format_for(path: str | Path) -> str:
    ext = Path(path).suffix.lower()
    try:
        return _PIL_FORMATS[ext]
    except KeyError:
        raise ImageWriteError(
            path, f"unsupported output extension {ext!r} (use one of {', '.join(IMAGE_EXTENSIONS)})"
        ) from None


_MODE_OF_CHANNELS = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
#: Formats whose files Pillow writes a resolution (dots per inch) into: JPEG (JFIF), PNG (pHYs), TIFF, BMP; a WebP's
#: is in its EXIF, kept as such.
DPI_FORMATS = ("JPEG", "PNG", "TIFF", "BMP")
#: TIFF compressions Pillow (libtiff) writes for 8-bit L, LA, RGB and RGBA: an input's is kept (`encode_image`); others
#: (CCITT fax, for 1-bit images; SGI log, for HDR) do not fit an 8-bit output, which is then written uncompressed.
TIFF_COMPRESSIONS = ("tiff_lzw", "tiff_adobe_deflate", "tiff_deflate", "packbits", "jpeg", "lzma", "zstd")


def resolution_of(im: Image.Image) -> tuple[float, float] | None:
    """(x, y) dots per inch an opened image file declares (Pillow's `info["dpi"]`: JFIF or EXIF, pHYs, TIFF, BMP),
    swapped when its EXIF orientation turns it upright by a quarter turn; None when it declares none usable."""
    dpi = im.info.get("dpi")
    try:
        x, y = (float(v) for v in dpi)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    if not (0 < x < 1e6 and 0 < y < 1e6):  # 0 (an aspect ratio only), NaN, nonsense
        return None
    try:
        turned = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except Exception:
        turned = False
    return (y, x) if turned else (x, y)
#: The colour space an ICC profile must declare (header bytes 16-20) to describe written pixels of each mode.
_ICC_SPACES = {"L": b"GRAY", "LA": b"GRAY", "RGB": b"RGB ", "RGBA": b"RGB "}


def encode_image(
    image: np.ndarray | Image.Image,
    fmt: str,
    *,
    quality: int = 95,
    exif: bytes | None = None,
    icc_profile: bytes | None = None,
    lossless: bool = False,
    dpi: tuple[float, float] | None = None,
    tiff_compression: str | None = None,
) -> bytes:
    """Encode an image to bytes in the Pillow format `fmt` (JPEG, PNG, BMP, WEBP, TIFF): uint8 RGB (H, W, 3),
    or grayscale (H, W), with alpha (H, W, 2), RGBA (H, W, 4); alpha is dropped where the format has none
    (JPEG, BMP). `icc_profile` is written only where it describes the pixels (a CMYK input's profile is not kept on
    its RGB output, nor a grayscale photo's on an RGB chip cut from it). `lossless`: a WebP is written lossless
    whatever `quality` (the input was lossless WebP: `is_lossless_webp`). `dpi`: (x, y) dots per inch, written where the
    format holds it (`DPI_FORMATS`). `tiff_compression`: a TIFF's compression, as Pillow names it (the input's: `info
    ["compression"]`), where Pillow writes it for the pixels (`TIFF_COMPRESSIONS`; "jpeg" at `quality`), else none."""
    if isinstance(image, Image.Image):
        im = image
    else:
        a = np.asarray(image, dtype=np.uint8)
        im = Image.fromarray(a, _MODE_OF_CHANNELS[1 if a.ndim == 2 else a.shape[2]])
    if fmt in ("JPEG", "BMP") and im.mode in ("LA", "RGBA"):
        im = im.convert(im.mode[:-1])
    buf = io.BytesIO()
    kw: dict = {}
    if fmt == "JPEG":
        kw.update(quality=quality, subsampling=0 if quality >= 90 else 2)
    elif fmt == "WEBP":
        kw.update(quality=quality)
        if quality >= 100 or lossless:
            kw.update(lossless=True)
    elif fmt == "PNG":
        kw.update(compress_level=6)
    if exif and fmt in ("JPEG", "PNG", "WEBP"):
        kw["exif"] = exif
    if icc_profile and fmt in ("JPEG", "PNG", "WEBP", "TIFF") and icc_profile[16:20] == _ICC_SPACES.get(im.mode):
        kw["icc_profile"] = icc_profile
    if dpi and fmt in DPI_FORMATS:
        kw["dpi"] = tuple(dpi)
    if fmt == "TIFF" and tiff_compression in TIFF_COMPRESSIONS:
        try:
            im.save(
                buf,
                format=fmt,
                compression=tiff_compression,
                **kw,
                **({"quality": quality} if tiff_compression == "jpeg" else {}),
            )
            return buf.getvalue()
        except OSError:  # a libtiff built without this codec (lzma, zstd): uncompressed, as Pillow's default
            buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def atomic_write_bytes(path: str | Path, data: bytes | Iterable[bytes]) -> None:
    """Write `data` (bytes, or chunks of bytes written as they come: a file larger than memory) to `path` via a
    new temporary file in the same folder (`utils.paths.create_temporary`) and an atomic rename."""
    path = Path(path)
    if not path.parent.is_dir():
        blocking = next((p for p in reversed(path.parents) if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            raise ImageWriteError(path, f"cannot write: {blocking} is a file, not a folder")
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = create_temporary(path)  # a new file: never through a link planted at its name
        with open(fd, "wb") as f:
            for chunk in [data] if isinstance(data, (bytes, bytearray, memoryview)) else data:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:  # an error of the chunks' producer too: no temporary file left behind
        try:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        except Exception:
            pass
        if isinstance(e, OSError):
            raise ImageWriteError(path, f"cannot write ({e.strerror or e})") from None
        raise


def write_image(
    path: str | Path,
    image: np.ndarray,
    *,
    quality: int = 95,
    exif: bytes | None = None,
    icc_profile: bytes | None = None,
    inputs: tuple[str | Path, ...] = (),
) -> None:
    """Atomically write uint8 RGB (H, W, 3) to `path`; the format follows the extension.

    `inputs`: paths this output must never overwrite (an output equal to an input is refused).
    """
    path = Path(path)
    for inp in inputs:
        if same_file(path, inp):
            raise ImageWriteError(path, "refusing to overwrite an input file")
    data = encode_image(image, pil_format_for(path), quality=quality, exif=exif, icc_profile=icc_profile)
    atomic_write_bytes(path, data)


def _stat_or_none(p: str | Path) -> os.stat_result | None:
    """`os.stat(p)`, None where nothing is there to stat (as `Path.exists` says False: missing, below a file, a
    link loop); other errors (no permission) raise."""
    try:
        return os.stat(p)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP):
            return None
        raise


def same_file(a: str | Path, b: str | Path) -> bool:
    """True when two paths name the same file (resolving links); False when either does not exist
    and their resolved paths differ.

    One `stat` per path (a folder job asks this of every input): when one exists and the other does not, they cannot
    name one file, so the paths are resolved (an `lstat` per folder of each) only when neither can be looked at."""
    try:
        sa, sb = _stat_or_none(a), _stat_or_none(b)
    except OSError:
        sa = sb = None
    if sa is not None and sb is not None:
        return os.path.samestat(sa, sb)
    if sa is not None or sb is not None:
        return False
    return Path(a).resolve() == Path(b).resolve()
