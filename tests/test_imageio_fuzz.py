"""Property-based: hostile bytes give a typed error or a valid RGB array, never a crash or a hang."""

from __future__ import annotations

import io

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from puface.utils.errors import ImageReadError
from puface.io.images import open_image


def _valid(fmt: str) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


VALID = {fmt: _valid(fmt) for fmt in ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")}


def _check(data: bytes) -> None:
    try:
        im = open_image("fuzz.bin", data=data)
    except ImageReadError as e:
        assert "fuzz.bin" in str(e) and e.reason
        return
    a = np.asarray(im)
    assert a.ndim == 3 and a.shape[2] == 3 and a.dtype == np.uint8


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_random_bytes(data):
    _check(data)


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(VALID)), st.floats(0.0, 1.0))
def test_truncated_valid_images(fmt, frac):
    data = VALID[fmt]
    _check(data[: int(len(data) * frac)])


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(VALID)), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8))
def test_corrupted_valid_images(fmt, edits):
    data = bytearray(VALID[fmt])
    for pos, val in edits:
        data[pos % len(data)] = val
    _check(bytes(data))
