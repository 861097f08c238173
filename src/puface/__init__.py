"""puface: remove facial cloaks from face-recognition training photos.

Images everywhere in the library are float RGB tensors in [0, 1], shape (N, 3, H, W).
"""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("puface")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
