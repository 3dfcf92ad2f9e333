"""Bytes <-> pixel arrays, with the limits that keep hostile images harmless.

Input rules (documented in the API description):
- Formats: PNG, JPEG, WebP, GIF, BMP, TIFF (detected from the bytes, not the content type).
- The limits are checked from the header before any pixel is decoded: pixels as the network
  sees them (sides under 16 px are padded), output pixels, and the raster's bytes.
- EXIF orientation is applied; metadata is not copied to the output.
- Grayscale, bilevel, CMYK and palette images are converted to RGB; 16-bit images are scaled
  to 8 bits (value / 257); the output is always RGB(A) 8-bit.
- Alpha (RGBA, LA, palette transparency) is kept: the network sees the RGB channels, the alpha
  channel is carried over (resized bicubically for super-resolution) into PNG and WebP output;
  JPEG output is composited onto white. A fully opaque alpha channel is dropped.
- Animated or multi-page images are refused (415): which frame to use would be a guess.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
import simplejpeg
from isal import isal_zlib
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import ImageTooLarge, InvalidImage, UnsupportedMediaType
from service.registry import MIN_SIDE_PX

INPUT_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
INPUT_CONTENT_TYPES = frozenset({
    "image/png", "image/jpeg", "image/jpg", "image/pjpeg", "image/webp", "image/gif",
    "image/bmp", "image/x-ms-bmp", "image/tiff"})
OUTPUT_CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}

# We check sizes ourselves (from the header, against settings) and reject before decoding, so
# Pillow's own warning between MAX_IMAGE_PIXELS and twice that is noise.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)


def raster_bytes(mode: str, width: int, height: int) -> int:
    """Bytes Pillow allocates to hold an image of `mode` (1, 2 or 4 per pixel)."""
    if mode in ("1", "L", "P"):
        return width * height
    if mode.startswith("I;16"):
        return 2 * width * height
    return 4 * width * height


@dataclass(frozen=True)
class Decoded:
    rgb: np.ndarray            # (H, W, 3) uint8
    alpha: np.ndarray | None   # (H, W) uint8, None when absent or fully opaque


def decode(data: bytes, *, max_pixels: int, scale: int = 1,
           max_output_pixels: int | None = None,
           max_decoded_bytes: int | None = None) -> Decoded:
    """Decode an image after checking its header; `scale` is the output/input side ratio,
    `max_decoded_bytes` the largest raster Pillow may allocate (None: 4 bytes per allowed
    pixel)."""
    if not data:
        raise InvalidImage("the body is empty; send the image bytes")
    with _open(data) as im:
        width, height = im.size
        if width < 1 or height < 1:
            raise InvalidImage(f"the image has no pixels ({width}x{height})")
        if width * height > max_pixels:
            raise ImageTooLarge(f"the image is {width}x{height} = {width * height} pixels; "
                                f"the limit is {max_pixels}")
        # The network runs on the padded image: a 1 x 100000 strip costs 16 x 100000. (One
        # padded tile, 16 x 16, is always allowed: no limit is meant to refuse a thumbnail.)
        padded = max(width, MIN_SIDE_PX) * max(height, MIN_SIDE_PX)
        if padded > max(max_pixels, MIN_SIDE_PX * MIN_SIDE_PX):
            raise ImageTooLarge(f"the image is {width}x{height}, padded to at least "
                                f"{MIN_SIDE_PX} px a side for the network = {padded} pixels; "
                                f"the limit is {max_pixels}")
        out_pixels = padded * scale * scale
        if max_output_pixels is not None and out_pixels > max_output_pixels:
            raise ImageTooLarge(f"the output would be {width * scale}x{height * scale} "
                                f"({out_pixels} pixels computed); the limit is "
                                f"{max_output_pixels}")
        max_bytes = max_decoded_bytes if max_decoded_bytes is not None else 4 * max_pixels
        decoded = raster_bytes(im.mode, width, height)
        if decoded > max_bytes:
            raise ImageTooLarge(f"the {im.mode} image decodes to {decoded} bytes; the limit is "
                                f"{max_bytes}")
        if getattr(im, "n_frames", 1) > 1:
            raise UnsupportedMediaType(f"animated or multi-page {im.format} images are not "
                                       "supported; send a single frame")
        try:
            im.load()
            rgb, alpha = _to_arrays(_oriented(im))
        except Image.DecompressionBombError as e:
            raise ImageTooLarge(str(e)) from None
        except Exception as e:  # Pillow raises many kinds on corrupt data; all are the client's
            raise InvalidImage(f"the {im.format} image could not be decoded "
                               f"(truncated or corrupt): {_short(e)}") from None
    return Decoded(rgb, alpha)


def _open(data: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=INPUT_FORMATS)
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(str(e)) from None
    except UnidentifiedImageError:
        raise InvalidImage("the body is not an image in a supported format "
                           f"({', '.join(INPUT_FORMATS)})") from None
    except Exception as e:
        raise InvalidImage(f"the image header could not be read: {_short(e)}") from None


def _oriented(im: Image.Image) -> Image.Image:
    """Apply EXIF orientation; a broken EXIF block is ignored rather than fatal."""
    try:
        return ImageOps.exif_transpose(im) or im
    except Exception:
        return im


def _to_arrays(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    mode = im.mode
    if mode in _SIXTEEN_BIT:
        gray = np.asarray(im).astype(np.float32)
        gray = np.clip(np.rint(gray / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2), None
    if mode == "F":
        gray = np.clip(np.rint(np.asarray(im)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2), None
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode == "P" and "transparency" in im.info)
    if has_alpha:
        rgba = np.asarray(im.convert("RGBA"))
        alpha = rgba[..., 3]
        return np.ascontiguousarray(rgba[..., :3]), (None if alpha.min() == 255 else alpha.copy())
    return np.asarray(im.convert("RGB")), None


def _short(e: Exception) -> str:
    text = str(e) or type(e).__name__
    return text[:200]


def pad_to(rgb: np.ndarray, min_side: int) -> np.ndarray:
    """Replicate edges so both sides are at least `min_side` (networks need a minimum size)."""
    h, w = rgb.shape[:2]
    ph, pw = max(0, min_side - h), max(0, min_side - w)
    if not ph and not pw:
        return rgb
    return np.pad(rgb, ((0, ph), (0, pw), (0, 0)), mode="edge")


def encode(rgb: np.ndarray, alpha: np.ndarray | None, fmt: str, quality: int) -> bytes:
    """Encode RGB(A) uint8 pixels as png, jpeg or webp."""
    mask = None
    if alpha is not None:
        mask = Image.fromarray(alpha)
        size = (rgb.shape[1], rgb.shape[0])
        if mask.size != size:
            mask = mask.resize(size, Image.Resampling.BICUBIC)
    if fmt == "png":   # straight from the array: no copy into Pillow and back
        return png(rgb if mask is None else np.dstack([rgb, np.asarray(mask)]))
    if fmt == "jpeg" and mask is None:
        # libjpeg-turbo straight from the array: Pillow would first copy it into its own 4-byte
        # pixels (268 MiB for an 8192x8192 output); same size at 4:2:0, 2.4x faster on 2048x2048
        return simplejpeg.encode_jpeg(np.ascontiguousarray(rgb), quality=quality,
                                      colorspace="RGB", colorsubsampling="420")
    im = Image.fromarray(rgb)
    if mask is not None:
        if fmt == "jpeg":
            white = Image.new("RGB", im.size, (255, 255, 255))
            im = Image.composite(im, white, mask)
        else:
            im.putalpha(mask)
    buf = io.BytesIO()
    if fmt == "jpeg":
        im.save(buf, "JPEG", quality=quality)
    elif fmt == "webp":
        im.save(buf, "WEBP", quality=quality, method=4)
    else:
        raise ValueError(f"unknown output format {fmt!r}")
    return buf.getvalue()


def png(pixels: np.ndarray) -> bytes:
    """(H, W, 3 or 4) uint8 pixels as an 8-bit RGB(A) PNG, written for speed: every request
    for PNG output waits for it.

    Every row gets PNG's `Up` filter (the difference from the row above, one numpy subtraction
    per band of rows), then ISA-L's deflate at level 1. Pillow tries the five filters on every
    row and takes 2-3x as long; zlib's fastest setting (level 1, run-length matching only)
    takes 3x as long as ISA-L, for files of about the same size. Bands of `_PNG_BAND_BYTES`
    keep the filtered copy small: on an 8192x8192 output it would be 192 MiB more at once.
    """
    h, w, channels = pixels.shape
    rows = pixels.reshape(h, w * channels)
    band = max(1, _PNG_BAND_BYTES // (w * channels + 1))
    deflate = isal_zlib.compressobj(1)
    parts: list[bytes] = []
    filtered = np.empty((min(band, h), 1 + w * channels), np.uint8)
    filtered[:, 0] = 2                                    # filter type: Up
    for top in range(0, h, band):
        n = min(band, h - top)
        out = filtered[:n, 1:]
        if top == 0:
            out[0] = rows[0]                              # the row above the first is zeros
        else:
            np.subtract(rows[top], rows[top - 1], out=out[0])   # modulo 256, as PNG wants
        np.subtract(rows[top + 1:top + n], rows[top:top + n - 1], out=out[1:])
        parts.append(deflate.compress(filtered[:n]))
    parts.append(deflate.flush())
    data = b"".join(parts)
    del parts
    colour_type = {3: 2, 4: 6}[channels]                  # truecolour, truecolour with alpha
    header = struct.pack(">IIBBBBB", w, h, 8, colour_type, 0, 0, 0)
    return b"".join([b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", header), _chunk(b"IDAT", data),
                     _chunk(b"IEND", b"")])


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind))
    return b"".join([struct.pack(">I", len(data)), kind, data, struct.pack(">I", crc)])


_PNG_BAND_BYTES = 4 << 20   # filtered rows compressed at a time


# Luma weights of YIQ (and of YCbCr/BT.601): Y = 0.299 R + 0.587 G + 0.114 B.
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_MIX_ROWS = 256  # rows per chunk: float temporaries stay small on a 4096x4096 image


def mix_style(content: np.ndarray, stylised: np.ndarray, *, strength: float = 1.0,
              preserve_color: bool = False) -> np.ndarray:
    """How much of the style, and whether to keep the input's colours (uint8 in, uint8 out).

    `strength` blends in pixel space: out = s * stylised + (1 - s) * content. The per-style
    networks have no feature space to blend in; a conditional-instance-norm network could
    blend its style parameters instead, and would replace this call.

    `preserve_color` is the luminance-only transfer of Gatys et al. 2016 ("Preserving color in
    neural artistic style transfer"), as post-processing: the luminance Y of the (blended)
    output with the chroma (I, Q) of the input. Y's weights sum to 1 and I's and Q's to 0, so
    adding the change in Y to R, G and B alike changes Y by exactly that and leaves I and Q
    as they were (up to clipping to 0..255).
    """
    if content.shape != stylised.shape:
        raise ValueError(f"content {content.shape} and stylised {stylised.shape} differ")
    out = np.empty_like(stylised)
    for top in range(0, stylised.shape[0], _MIX_ROWS):
        c = content[top:top + _MIX_ROWS].astype(np.float32)
        s = stylised[top:top + _MIX_ROWS].astype(np.float32)
        if preserve_color:
            mixed = c + strength * ((s - c) @ _LUMA)[..., None]
        else:
            mixed = c + strength * (s - c)
        np.clip(np.rint(mixed), 0, 255, out=mixed)
        out[top:top + _MIX_ROWS] = mixed
    return out
