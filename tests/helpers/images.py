"""Image factories for tests, good and bad; all generated, nothing downloaded."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def pixels(width: int, height: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    """Smooth random content (noise compresses badly and stylises uninterestingly)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(1, height // 4), max(1, width // 4), channels), np.uint8)
    im = Image.fromarray(small.squeeze(-1) if channels == 1 else small)
    return np.array(im.resize((width, height), Image.Resampling.BILINEAR))


def encode(im: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def png(width: int = 32, height: int = 32, seed: int = 0, mode: str = "RGB") -> bytes:
    """A PNG in RGB, RGBA (half transparent), L, LA or P (with a transparent entry)."""
    if mode == "RGBA":
        rgba = pixels(width, height, seed, 4)
        rgba[..., 3] = np.where(np.arange(width) < width // 2, 255, 64)[None, :]
        return encode(Image.fromarray(rgba))
    if mode == "P":
        im = Image.fromarray(pixels(width, height, seed)).quantize(16)
        return encode(im, transparency=0)
    im = Image.fromarray(pixels(width, height, seed)).convert(mode)
    return encode(im)


def jpeg(width: int = 32, height: int = 32, seed: int = 0, mode: str = "RGB",
         orientation: int | None = None) -> bytes:
    im = Image.fromarray(pixels(width, height, seed)).convert(mode)
    params: dict[str, object] = {"quality": 95}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        params["exif"] = exif.tobytes()
    return encode(im, "JPEG", **params)


def webp(width: int = 32, height: int = 32, seed: int = 0) -> bytes:
    return encode(Image.fromarray(pixels(width, height, seed)), "WEBP", quality=90)


def png16(width: int = 32, height: int = 32) -> bytes:
    """A 16-bit grayscale PNG whose values use the whole 16-bit range."""
    ramp = np.linspace(0, 65535, width * height).reshape(height, width).astype(np.uint16)
    return encode(Image.fromarray(ramp))  # uint16 -> mode I;16


def animated_gif(width: int = 32, height: int = 32, frames: int = 3) -> bytes:
    ims = [Image.fromarray(pixels(width, height, seed)).convert("P") for seed in range(frames)]
    return encode(ims[0], "GIF", save_all=True, append_images=ims[1:], duration=100, loop=0)


def truncated(data: bytes, keep: float = 0.6) -> bytes:
    return data[: int(len(data) * keep)]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (the pixel data is a few zero rows)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(
        b"IEND", b"")


def png_bomb(side: int = 20000) -> bytes:
    """A real, complete 1-bit PNG of side x side zeros: kilobytes that decode to a huge image."""
    row = b"\x00" * (1 + (side + 7) // 8)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(
        b"IEND", b"")


SVG = (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="32" height="32">'
       b'<rect width="32" height="32" fill="red"/></svg>')
TEXT = b"hello, this is not an image\n"


def decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im
