"""Images in, resized RGB arrays out: the decode step, in Pillow, without TensorFlow.

Decoding and resizing follow ``keras.utils.load_img(path, target_size=..., interpolation=...)``
(Pillow, convert to RGB, resize only when the size differs), so cached features equal what
Keras' own loader and ``keras.applications.vgg16.preprocess_input`` would give. Beyond Keras:
EXIF orientation is applied (``exif_transpose``, on by default: phone photos come out upright),
16-bit images are scaled to 8 bits instead of clipped, and a pixel limit stops decompression
bombs before any pixel is decoded. Any failure is an :class:`ImageDecodeError` whose message is
the reason shown to the user; it never takes the run down.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from cache.files import sha256_bytes

from ..errors import ImageDecodeError

# We apply our own pixel limit (data.max_pixels); Pillow's warning would only repeat it. Set
# once here: warnings.catch_warnings() per call is not thread-safe, and decoding is threaded.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "hamming": Image.Resampling.HAMMING,
    "box": Image.Resampling.BOX,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class DecodeOptions:
    """How a file becomes a (height, width, 3) uint8 array."""

    size: tuple[int, int]                 # (height, width), as Keras' target_size
    interpolation: str = "bilinear"
    exif_transpose: bool = True
    max_pixels: int = 89_478_485
    jpeg_draft: bool = False              # JPEGs decoded at 1/2, 1/4 or 1/8 scale when large

    def fingerprint_part(self) -> dict:
        """The options that change the pixels (max_pixels only decides whether to decode).
        ``jpeg_draft`` is named only when on, so fingerprints made before it existed stay."""
        part = {"size": list(self.size), "interpolation": self.interpolation,
                "exif_transpose": self.exif_transpose, "library": "PIL"}
        if self.jpeg_draft:
            part["jpeg_draft"] = True
        return part


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # Pillow's convert() clips 16-bit values at 255 (a white image); scale instead.
        array = np.asarray(img, dtype=np.uint32)
        peak = 65535 if img.mode.startswith("I;16") or array.max(initial=0) > 255 else 255
        img = Image.fromarray((array * 255 // peak).astype(np.uint8), mode="L")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


def _draft(img: Image.Image, options: DecodeOptions) -> None:
    """Ask the JPEG decoder for the largest of 1/8, 1/4 and 1/2 scale that still covers
    ``options.size`` (libjpeg scales while it decodes: far less work on a large photo); other
    formats, and JPEGs too small to scale, are left as they are."""
    if img.format != "JPEG":
        return
    height, width = options.size
    if options.exif_transpose and img.getexif().get(ExifTags.Base.Orientation) in (5, 6, 7, 8):
        height, width = width, height  # the stored image is turned a quarter before the resize
    img.draft(None, (width, height))


def decode_bytes(data: bytes, options: DecodeOptions) -> np.ndarray:
    """Decode image ``data`` into a (height, width, 3) uint8 RGB array of ``options.size``."""
    if not data:
        raise ImageDecodeError("empty file")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image (unknown format)") from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"too large: {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageDecodeError(f"corrupt header: {exc}") from None
    width, height = img.size
    if width * height > options.max_pixels:
        raise ImageDecodeError(f"too large: {width}x{height} = {width * height:,} pixels, "
                               f"limit data.max_pixels = {options.max_pixels:,}")
    try:
        if options.jpeg_draft:
            _draft(img, options)
        img.load()
        if options.exif_transpose:
            img = ImageOps.exif_transpose(img)
        img = _to_rgb(img)
        target = (options.size[1], options.size[0])  # Pillow wants (width, height)
        if img.size != target:
            img = img.resize(target, _RESAMPLE[options.interpolation])
        array = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"truncated or corrupt: {exc}") from None
    return array


def decode_file(path: Path, options: DecodeOptions, expected_sha256: str | None = None
                ) -> np.ndarray:
    """Read and decode ``path``; with ``expected_sha256``, refuse a file that changed since.

    The check matters because features are stored under the content hash: features of new
    bytes filed under the old hash would be wrong forever.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageDecodeError(f"unreadable: {exc.strerror or type(exc).__name__}",
                               permanent=False) from None
    if expected_sha256 is not None and sha256_bytes(data) != expected_sha256:
        raise ImageDecodeError("file changed while the run was reading it", permanent=False)
    return decode_bytes(data, options)
