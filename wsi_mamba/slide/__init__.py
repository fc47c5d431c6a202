"""Reading whole-slide images: backends, tissue detection, tile grids, streaming, annotations."""

from .base import Slide
from .errors import AnnotationError, SlideError
from .reader import choose_backend, open_slide

__all__ = ["AnnotationError", "Slide", "SlideError", "choose_backend", "open_slide"]
