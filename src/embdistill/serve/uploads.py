"""Turn an uploaded file into a decoded image, or into a 4xx with a message a person understands.

The page must stay up whatever is dropped on it, so every way an upload can be bad
maps to one :class:`UploadError` with an HTTP status: nothing (400), too big (413),
not an image (415), a truncated or corrupt image (400), too many pixels (413).
Decoding happens in memory: nothing is written to disk.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image

__all__ = ["UploadError", "decode_upload", "describe_size"]

MAX_PIXELS = 50_000_000  # 50 MP: any phone photo fits; a decompression bomb does not


@dataclass
class UploadError(Exception):
    """A bad upload: ``status`` is the HTTP status to answer with, ``message`` what to show on the page."""

    status: int
    message: str

    def __str__(self) -> str:
        return self.message


def describe_size(size: int) -> str:
    """Bytes in the unit a person reads: '812 bytes', '45.3 KB', '12.0 MB'."""
    if size < 1000:
        return f"{size} bytes"
    return f"{size / 1000:.1f} KB" if size < 1_000_000 else f"{size / 1_000_000:.1f} MB"


def decode_upload(data: bytes, filename: str, max_bytes: int, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The upload as a fully decoded RGB image, exactly as `embdistill embed` decodes a file."""
    name = filename or "the upload"
    if not data:
        raise UploadError(400, f"{name} is empty (0 bytes): choose an image file")
    if len(data) > max_bytes:
        raise UploadError(413, f"{name} is {describe_size(len(data))}, over the {describe_size(max_bytes)} upload limit")
    try:
        image = Image.open(io.BytesIO(data))
    except (OSError, ValueError, SyntaxError) as err:  # Pillow's "cannot identify image file"
        raise UploadError(415, f"{name} is not an image this page can read (JPEG, PNG, WebP, BMP, ...): {err}") from err
    width, height = image.size
    if width * height > max_pixels:
        raise UploadError(413, f"{name} is {width}x{height} pixels, over the {max_pixels / 1e6:.0f} megapixel limit")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()  # the real decode: a truncated JPEG fails here, not at open()
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        raise UploadError(400, f"{name} is a {image.format or 'image'} file that cannot be decoded (truncated or corrupt?): {err}") from err
