"""Published photos: the training-time protocol with every training chip taken back into its photo.

A benchmark's chips are not what a trainer meets. The user publishes full photos (`puface cloak --align`
pastes each face's cloak into the photo through the inverse alignment); the trainer purifies full photos
(`puface purify --align`: every face is cut, purified and its change pasted back); the trainer's FR
pipeline then cuts the faces again. Each step resamples the change between chip and photo pixels.
`PhotoPath` runs that path for one chip whose source photo is known ([data] photos: a folder of the
photos the chips were cut from, `<identity>/<stem>.<ext>` for the chip `<identity>/<stem>.<ext>`):

1. publish: the chip's change (cloak - natural chip) is pasted into the photo, as `cloak --align` does
   (feather, refine passes); a natural chip publishes its photo unchanged; with `jpeg`, every published
   photo is then re-encoded as JPEG at that quality, as photo sites do ([data] photos_jpeg);
2. defend: the defense runs on the published photo through `align_adapter` (every face, as
   `purify --align`); no defense leaves the photo as published;
3. cut again: the labelled face (the one closest to the photo's centre, as the chips were cut) is
   detected and aligned anew in the result.

`PhotoProtocol` is `Protocol` with every training image (the natural ones of everyone and the protected
users' cloaked ones) taken through the path, for every defense including none; test images stay the
clean chips. Defended images are cached under the path's settings by the content of the image and of its photo.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..align import AlignedFace, FaceAligner, FaceDetector, align_adapter, extract_chip, paste_back
from ..defenses.base import Defense, NoDefense
from ..io.images import IMAGE_EXTENSIONS, encode_image, read_image
from ..io.jobs import FileJob, LoadedImage, Outcome
from ..utils.errors import PufaceError
from ..utils.fingerprint import content_hashes
from ..utils.images import image_to_tensor, tensor_to_image, to_uint8
from .metrics import Labels
from .protocol import Protocol

__all__ = ["PhotoPath", "PhotoProtocol"]


class PhotoPath:
    """Publish chips as their source photos, defend the photo, cut the face again.

    Args:
        photos: folder of the source photos, `<identity>/<stem>.<ext>` (any image extension) per chip.
        chips: the chips' root folder (the evaluation's data root), to find each chip's identity/stem.
        size: chip size (150: dlib layout, 112: ArcFace), as the chips were cut.
        feather, refine_steps: the paste-back settings of `cloak --align` / `purify --align` (defaults).
        detector: face detector of every step ("hog", "cnn", "hog+cnn").
        jpeg: JPEG quality (1..95, Pillow, 4:2:0 below 90) every published photo is re-encoded with; None: lossless.
    """

    def __init__(self, photos: str | Path, chips: str | Path, *, size: int = 150, feather: float = 4.0,
                 refine_steps: int = 2, detector: str = "hog+cnn", jpeg: int | None = None):
        if jpeg is not None and (isinstance(jpeg, bool) or not isinstance(jpeg, int) or not 1 <= jpeg <= 95):
            raise PufaceError(f"photos_jpeg: a JPEG quality must be an integer in 1..95, got {jpeg!r}")
        self.photos = Path(photos)
        self.chips = Path(chips)
        if not self.photos.is_dir():
            raise PufaceError(
                f"{self.photos}: photo folder not found ([data] photos: the photos the chips were cut from)"
            )
        self.size = int(size)
        self.feather = float(feather)
        self.refine_steps = int(refine_steps)
        self.detector = detector
        self.jpeg = jpeg
        # upright only: the protocol's photos are upright LFW photos, and its published numbers were made so
        self.cutter = FaceAligner(self.size, FaceDetector(detector, rotations="off"), pick="center", min_face=0.0)
        self._found: dict[Path, Path] = {}  # chip -> its source photo
        self._faces: dict[Path, AlignedFace] = {}  # photo -> its labelled face
        self._digests: dict[Path, str] = {}  # photo -> hash of its file

    @property
    def config(self) -> dict:
        """The path's settings (what its results depend on besides the images and their photos' content)."""
        cfg = {"size": self.size, "feather": self.feather,
               "refine_steps": self.refine_steps, "detector": self.detector}
        return cfg if self.jpeg is None else {**cfg, "jpeg": self.jpeg}

    def photo_for(self, chip: str | Path) -> Path:
        """The source photo of a chip file: same identity folder and stem, any image extension (looked up once
        per chip)."""
        chip = Path(chip)
        if chip in self._found:
            return self._found[chip]
        try:
            rel = chip.relative_to(self.chips)
        except ValueError:
            rel = Path(chip.parent.name) / chip.name
        folder = self.photos / rel.parent
        for ext in (chip.suffix, *IMAGE_EXTENSIONS):
            p = folder / f"{rel.stem}{ext}"
            if p.is_file():
                self._found[chip] = p
                return p
        raise PufaceError(f"{chip}: no source photo {folder / rel.stem}.* in {self.photos} ([data] photos)")

    def digest(self, chip: str | Path) -> str:
        """Hash of the chip's source photo file (16 hex digits, read once per photo): results cached under it
        are not served again for another photo saved under the same name."""
        photo = self.photo_for(chip)
        if photo not in self._digests:
            self._digests[photo] = hashlib.sha256(photo.read_bytes()).hexdigest()[:16]
        return self._digests[photo]

    def _face(self, photo: Path, image: np.ndarray | None = None) -> AlignedFace:
        """The labelled face of a natural photo (`AlignedFace`), detected once and kept; `image`: the photo
        already read (else it is read here, only when the face is not known yet)."""
        if photo not in self._faces:
            faces = self.cutter.align(read_image(photo) if image is None else image).faces
            if not faces:
                raise PufaceError(f"{photo}: no face found in the source photo")
            self._faces[photo] = faces[0]
        return self._faces[photo]

    def _natural(self, photo: Path) -> tuple[np.ndarray, AlignedFace]:
        """The photo (uint8 (H, W, 3), read each time: photos can be large) and its labelled face (`_face`)."""
        image = read_image(photo)
        return image, self._face(photo, image)

    def publish(self, chip: str | Path, natural: np.ndarray, image: np.ndarray) -> np.ndarray:
        """The photo of `chip` as published with `image` (uint8 (S, S, 3), the chip as the attack left it)
        in place of the natural chip `natural`: the change pasted into the photo (uint8 (H, W, 3)), then
        re-encoded when `jpeg` is set."""
        photo, face = self._natural(self.photo_for(chip))
        delta = image.astype(np.int16) - natural.astype(np.int16)
        if delta.any():
            out = np.clip(face.chip.astype(np.int16) + delta, 0, 255).astype(np.uint8)
            photo = paste_back(
                photo, [(face.transform, face.chip, out)], feather=self.feather, refine_steps=self.refine_steps
            )
        if self.jpeg is not None:
            photo = np.asarray(Image.open(io.BytesIO(encode_image(photo, "JPEG", quality=self.jpeg))).convert("RGB"))
        return photo

    def cut(self, chip: str | Path, photo: np.ndarray) -> np.ndarray:
        """The labelled face of a (published, defended) photo of `chip`, detected and aligned anew; where no face
        is found any more, the face is cut where it was in the natural photo."""
        faces = self.cutter.align(photo).faces
        if faces:
            return faces[0].chip
        return extract_chip(photo, self._face(self.photo_for(chip)).transform)

    def photo_defense(self, defense: Defense):
        """`defense` (chips, float NCHW) as a photo-level function: list of uint8 photos -> list of uint8 photos."""
        if isinstance(defense, NoDefense):
            return lambda photos: list(photos)

        def chips(items: list[LoadedImage]) -> list[Outcome]:
            x = torch.stack([image_to_tensor(it.image) for it in items])
            y = to_uint8(defense(x))
            return [Outcome.ok(tensor_to_image(y[i])) for i in range(len(items))]

        process = align_adapter(chips, chip_size=self.size, no_face="copy", detector=self.detector, rotations="off",
                                feather=self.feather, refine_steps=self.refine_steps)

        def run(photos: Sequence[np.ndarray]) -> list[np.ndarray]:
            jobs = [
                LoadedImage(FileJob(Path(f"p{i}.png"), Path(f"p{i}.png"), Path(f"p{i}.png")), p)
                for i, p in enumerate(photos)
            ]
            outs = process(jobs)
            return [o.image if o.status == "ok" and o.image is not None else p for o, p in zip(outs, photos)]

        return run

    def __call__(
        self, defense: Defense, chips: Sequence[str | Path], naturals: torch.Tensor, images: torch.Tensor
    ) -> torch.Tensor:
        """Published, defended, cut again: uint8 (N, 3, S, S) images of `chips` (their natural chips `naturals`,
        uint8 (N, 3, S, S)) -> uint8 (N, 3, S, S)."""
        nat = naturals.permute(0, 2, 3, 1).numpy()
        img = images.permute(0, 2, 3, 1).numpy()
        published = [self.publish(c, n, i) for c, n, i in zip(chips, nat, img)]
        defended = self.photo_defense(defense)(published)
        cut = [self.cut(c, p) for c, p in zip(chips, defended)]
        return torch.from_numpy(np.stack(cut)).permute(0, 3, 1, 2).contiguous()


class PhotoProtocol(Protocol):
    """The training-time protocol on published photos (see the module docstring): every training image goes
    through `photos` (a `PhotoPath`) for every defense, none included."""

    def __init__(self, *args, photos: PhotoPath, **kwargs):
        self.photos = photos
        super().__init__(*args, **kwargs)
        train = self.data.train
        # content hash -> (chip file, natural chip): the natural training chips, and each cloak as it is made
        self._source: dict[str, tuple[Path, torch.Tensor]] = {
            h: (p, train.images[i]) for i, (p, h) in enumerate(zip(train.paths, train.hashes))
        }

    def _check(self) -> None:
        super()._check()
        for label, d in self.defenses.items():
            if d.groupwise:
                raise PufaceError(
                    f"defense {label}: group-wise defenses are not run on published photos ([data] photos)"
                )

    def cloak(self, spec, user: str) -> torch.Tensor:
        x = super().cloak(spec, user)
        side = self.cloaked_split
        rows = side.rows_of(user)
        for h, r in zip(content_hashes(x), rows):
            self._source.setdefault(h, (side.paths[r], side.images[r]))
        return x

    def as_published(self, images: torch.Tensor, hashes: Sequence[str]) -> tuple[torch.Tensor, list[str]]:
        """Training images published as their photos and cut again (no defense)."""
        return self.apply_defense(NoDefense(), images, hashes)

    def apply_defense(self, defense: Defense, images: torch.Tensor, hashes: Sequence[str],
                      label: str = "", groups: Labels | None = None) -> tuple[torch.Tensor, list[str]]:
        """Each image published as its photo, `defense` (none included) run on the photo, the face cut again;
        cached under the path's settings by the image's content and its source photo's (`PhotoPath.digest`)."""
        plain = "none" if isinstance(defense, NoDefense) else None
        key = f"photo:{_key(self.photos.config)}:{plain or defense.cache_key}"
        earlier = [] if plain else [f"photo:{_key(self.photos.config)}:{k}" for k in defense.earlier_cache_keys]
        try:
            src = [self._source[h] for h in hashes]
        except KeyError:
            raise PufaceError("an image reached the photo path without its source photo (not a training chip "
                              "nor a cloak of one)") from None
        keys = [f"{h}@{self.photos.digest(chip)}" for h, (chip, _) in zip(hashes, src)]

        def batch(idx: torch.Tensor) -> torch.Tensor:
            rows = [src[int(i)] for i in idx]
            return self.photos(defense, [p for p, _ in rows], torch.stack([n for _, n in rows]), images[idx])

        return self._defend_batches(defense, images, keys, batch, key=key if self.cache is not None else None,
                                    label=label, groups=groups, desc="photos, defense", earlier=earlier)


def _key(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
