"""retouch: diffusion-based image-to-image editing with fine-grained control."""

from retouch.errors import RetouchError

__version__ = "0.1.0"

__all__ = ["RetouchError", "__version__"]
