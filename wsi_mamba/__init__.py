"""wsi-mamba: gigapixel whole-slide pathology analysis with a high-resolution VMamba."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("wsi-mamba")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
