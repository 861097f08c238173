"""Make tests/fixtures/lpips_reference.json (+ the PNG inputs) from the reference ST-LPIPS package.

The reference `stlpips_pytorch` imports torchvision, IPython and torchsummary, so it runs in a
throw-away venv outside the project (never install torchvision into the project venv):

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 stlpips-pytorch==0.0.2 \
        IPython torchsummary numpy pillow
    /tmp/refvenv/bin/python tools/make_lpips_fixture.py          # from the repository root

It writes deterministic synthetic RGB images (seeded numpy, smooth colour fields + texture, saved as
8-bit PNG so the test reads exactly the same pixels) to tests/fixtures/lpips/, runs
`LPIPS(net=..., variant='shift_tolerant')(x, y, normalize=True)` on each pair (inputs in [0, 1])
in float32 and in float64, and records the distances. Run it once; tests/test_perceptual.py checks
`puface.attacks.perceptual.LPIPS` against the recorded values.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
IMG_DIR = ROOT / "tests" / "fixtures" / "lpips"
OUT = ROOT / "tests" / "fixtures" / "lpips_reference.json"
SEED = 20240611


def smooth_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) uint8: bicubic-upsampled random 8x-coarse colour field + a gradient + mild texture."""
    coarse = rng.uniform(0, 255, size=(h // 8 + 2, w // 8 + 2, 3)).astype(np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.float64)
    ramp = np.linspace(-30, 30, w)[None, :, None] * rng.uniform(-1, 1, size=(1, 1, 3))
    texture = rng.normal(0, 3, size=(h, w, 3))
    return np.clip(np.rint(field + ramp + texture), 0, 255).astype(np.uint8)


def add_noise(rng: np.random.Generator, img: np.ndarray, sigma: float) -> np.ndarray:
    return np.clip(np.rint(img + rng.normal(0, sigma, size=img.shape)), 0, 255).astype(np.uint8)


def make_images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    images: dict[str, np.ndarray] = {}
    for side in (64, 112):
        big = smooth_image(rng, side + 2, side + 3)
        a = big[:side, :side]
        images[f"a{side}"] = a
        images[f"a{side}_noise"] = add_noise(rng, a, 4.0)  # x vs x + small noise
        images[f"a{side}_shift"] = big[1 : side + 1, 2 : side + 2]  # content shifted by (1, 2) px
        images[f"b{side}"] = smooth_image(rng, side, side)  # a different image
    images["c80x96"] = smooth_image(rng, 80, 96)  # non-square, H=80, W=96
    images["d80x96"] = add_noise(rng, smooth_image(rng, 80, 96), 10.0)
    return images


PAIRS = [
    ("a64", "a64_noise"), ("a64", "a64_shift"), ("a64", "b64"),
    ("a112", "a112_noise"), ("a112", "a112_shift"), ("a112", "b112"),
    ("c80x96", "d80x96"),
]


def to_tensor(img: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1)[None].to(dtype) / 255.0


def main() -> None:
    from stlpips_pytorch import stlpips  # reference; needs torchvision, IPython, torchsummary

    IMG_DIR.mkdir(parents=True, exist_ok=True)
    images = make_images()
    files = {}
    for name, img in images.items():
        path = IMG_DIR / f"{name}.png"
        Image.fromarray(img).save(path, optimize=True)
        assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), img)
        files[name] = {"file": f"lpips/{name}.png", "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}

    torch.set_grad_enabled(False)
    pairs = [{"x": x, "y": y} for x, y in PAIRS]
    for net in ("alex", "vgg"):
        model = stlpips.LPIPS(net=net, variant="shift_tolerant", verbose=False).eval()
        for dtype, key in ((torch.float32, net), (torch.float64, f"{net}_f64")):
            model = model.to(dtype)
            for p in pairs:
                x, y = to_tensor(images[p["x"]], dtype), to_tensor(images[p["y"]], dtype)
                p[key] = float(model(x, y, normalize=True).flatten()[0])

    doc = {
        "description": "ST-LPIPS distances from the reference stlpips-pytorch 0.0.2, "
        "LPIPS(net, variant='shift_tolerant')(x, y, normalize=True) with x, y = PNG / 255 (RGB, NCHW, batch 1); "
        "keys alex/vgg: float32, alex_f64/vgg_f64: the model and inputs in float64.",
        "made_by": "tools/make_lpips_fixture.py",
        "seed": SEED,
        "versions": {"stlpips-pytorch": "0.0.2", "torch": torch.__version__, "numpy": np.__version__, "python": sys.version.split()[0]},
        "images": files,
        "pairs": pairs,
    }
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    for p in pairs:
        print(f"{p['x']:>8} vs {p['y']:<12} alex {p['alex']:.6f}  vgg {p['vgg']:.6f}")
    print(f"wrote {OUT} and {len(files)} PNGs in {IMG_DIR}")


if __name__ == "__main__":
    main()
