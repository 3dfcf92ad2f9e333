"""A generated corpus of bad and odd requests, each with the answer the service owes it.

Everything is made here from code (no downloads): broken and exotic images, bodies that are not
images, malformed multipart, parameters of the wrong type or out of range, oversized URLs and
headers, and clients slower than the timeouts. `corpus(limits, ...)` builds the cases for the
limits a server runs with; `send(host, port, case)` plays one case over a raw socket (raw,
because an HTTP library would refuse to send most of these) and returns what came back.

Expected answers follow the service's rules (service/README.md): a valid image, however odd,
is 200; undecodable bytes 400; over a limit 413 (body, pixels, decoded bytes) / 414 (URL) /
431 (headers) / 408 (too slow); wrong content type or an animation 415; bad parameters 422;
unknown names 404. `code` is the JSON error code, or None for 200 and for the one answer that
comes from the HTTP parser itself (a malformed Content-Length), which is plain text.

Used by `python -m bench reliability` (with the server's peak RSS per case) and by
tests/service/test_service_faults.py (every case, against the tiny test models).
"""

from __future__ import annotations

import asyncio
import io
import struct
import time
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

BOUNDARY = "hostile-boundary-7d2f"


@dataclass(frozen=True)
class Limits:
    """The server settings the corpus is built against (service.settings.Settings fields)."""

    max_body_bytes: int
    max_pixels: int
    max_url_bytes: int
    max_header_bytes: int
    body_timeout_s: float
    header_timeout_s: float


@dataclass(frozen=True)
class Case:
    name: str
    group: str                   # file | multipart | params | http
    status: int                  # the expected status
    code: str | None             # the expected JSON error code (None: 200 or not JSON)
    why: str
    method: str = "POST"
    target: str = "/v1/stylize?style={style}"
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "image/png"),)
    body: bytes = b""
    # How to send: "normal"; "stall" (head and part of the body, then wait); "endless-head"
    # (a header value that never ends, 16 KB at a time); "open-head" (half a head, then wait).
    mode: str = "normal"
    declared_length: int | None = None      # Content-Length to claim instead of len(body)
    chunked: bool = False


@dataclass
class Outcome:
    status: int | None          # None: the connection closed without an answer
    code: str | None
    seconds: float
    headers: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    def matches(self, case: Case) -> bool:
        return self.status == case.status and (case.code is None or self.code == case.code)


# -- images --------------------------------------------------------------------------------------

def pixels(width: int, height: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    """Smooth random content: compresses like a photo rather than like noise."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(1, height // 8), max(1, width // 8), channels), np.uint8)
    im = Image.fromarray(small.squeeze(-1) if channels == 1 else small)
    return np.asarray(im.resize((width, height), Image.Resampling.BILINEAR))


def encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def rgb(width: int = 64, height: int = 64, seed: int = 0) -> Image.Image:
    return Image.fromarray(pixels(width, height, seed))


def png(width: int = 64, height: int = 64, seed: int = 0) -> bytes:
    return encode(rgb(width, height, seed), "PNG")


def jpeg(width: int = 64, height: int = 64, seed: int = 0, **params: object) -> bytes:
    return encode(rgb(width, height, seed), "JPEG", quality=90, **params)


def webp(width: int = 64, height: int = 64, seed: int = 0) -> bytes:
    return encode(rgb(width, height, seed), "WEBP", quality=80)


def chunk(kind: bytes, data: bytes) -> bytes:
    """A PNG chunk with its CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def raw_png(width: int, height: int, bit_depth: int, color_type: int, rows: bytes,
            extra: bytes = b"") -> bytes:
    """A PNG from filtered scanlines (`rows`), for what Pillow will not write itself."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra
            + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))


def png16(width: int, height: int, channels: int) -> bytes:
    """16-bit gray (1), RGB (3) or RGBA (4), using the whole 16-bit range."""
    color_type = {1: 0, 3: 2, 4: 6}[channels]
    ramp = np.linspace(0, 65535, width * height * channels).astype(">u2")
    data = ramp.reshape(height, width * channels).tobytes()
    row = width * channels * 2
    rows = b"".join(b"\x00" + data[i * row:(i + 1) * row] for i in range(height))
    return raw_png(width, height, 16, color_type, rows)


def png_claiming(width: int, height: int) -> bytes:
    """A valid-looking header for width x height, with a few bytes of pixel data."""
    return raw_png(width, height, 8, 2, b"\x00" * 64)


def png_bomb(side: int) -> bytes:
    """A complete 1-bit PNG of side x side zeros: kilobytes that decode to side² pixels."""
    row = b"\x00" * (1 + (side + 7) // 8)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


def corrupted(data: bytes, *, start: float = 0.3, count: int = 64, seed: int = 1) -> bytes:
    """Overwrite `count` bytes after the header with random ones (same bytes every run)."""
    rng = np.random.default_rng(seed)
    out = bytearray(data)
    first = int(len(out) * start)
    for i in rng.choice(np.arange(first, len(out) - 4), size=min(count, len(out) - first - 4),
                        replace=False):
        out[i] = int(rng.integers(0, 256))
    return bytes(out)


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    return data[: int(len(data) * keep)]


def ycck_jpeg(width: int = 64, height: int = 64) -> bytes:
    """A CMYK JPEG relabelled YCCK (Adobe APP14 transform 2), as Photoshop writes them."""
    data = bytearray(encode(rgb(width, height).convert("CMYK"), "JPEG", quality=90))
    at = data.find(b"Adobe")
    data[at + 11] = 2          # "Adobe", version (2), flags0 (2), flags1 (2), transform (1)
    return bytes(data)


def jpeg_claiming(width: int, height: int) -> bytes:
    """A JPEG whose frame header (SOF0) claims width x height."""
    data = bytearray(jpeg(16, 16))
    at = data.find(b"\xff\xc0")
    data[at + 5:at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_claiming(width: int, height: int) -> bytes:
    """A one-frame GIF whose logical screen claims width x height."""
    data = bytearray(encode(rgb(8, 8).convert("P"), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def bmp_claiming(width: int, height: int) -> bytes:
    data = bytearray(encode(rgb(8, 8), "BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def frames(fmt: str, n: int = 3, **params: object) -> bytes:
    ims = [rgb(32, 32, seed) for seed in range(n)]
    return encode(ims[0], fmt, save_all=True, append_images=ims[1:], **params)


def exif_with(*, size: int, orientation: int = 1, self_loop: bool = False) -> bytes:
    """TIFF-structured EXIF of about `size` bytes (a long ImageDescription), optionally with
    an IFD whose next-IFD offset points back at itself."""
    text = b"x" * max(0, size - 64) + b"\x00"
    entries = [(0x010E, 2, len(text), 8 + 2 + 2 * 12 + 4),   # ImageDescription, ASCII
               (0x0112, 3, 1, orientation)]                    # Orientation, SHORT
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    ifd += struct.pack("<I", 8 if self_loop else 0)
    return b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd + text


def huge_icc_png(size: int) -> bytes:
    """A PNG whose iCCP chunk decompresses to `size` bytes of (incompressible) noise."""
    noise = np.random.default_rng(7).integers(0, 256, size, np.uint8).tobytes()
    iccp = chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(noise))
    data = png(32, 32)
    return data[:33] + iccp + data[33:]            # after the IHDR chunk


def png_with_exif_chunk(size: int) -> bytes:
    exif = exif_with(size=size)[6:]               # the eXIf chunk has no "Exif\0\0" prefix
    data = png(32, 32)
    return data[:33] + chunk(b"eXIf", exif) + data[33:]


def multipart(*parts: tuple[str, str | None, str | None, bytes], boundary: str = BOUNDARY,
              close: bool = True) -> bytes:
    """(field name, filename, content type, data) parts."""
    out = b""
    for name, filename, content_type, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"'
                                                     if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if content_type:
            out += f"Content-Type: {content_type}\r\n".encode()
        out += b"\r\n" + data + b"\r\n"
    return out + (f"--{boundary}--\r\n".encode() if close else b"")


SVG = (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
       b'<rect width="64" height="64" fill="red"/></svg>')
HTML = b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>"
PDF = (b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[]"
       b"/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n")
TEXT = b"hello, this is not an image\n"


def register_image_strategies() -> None:
    """Teach schemathesis (a test extra) to send real small images where the schema says
    image/* or `format: binary`, so that valid generated requests reach the model instead of
    stopping at 400. Registration is global to schemathesis in this process."""
    import schemathesis
    from hypothesis import strategies as st

    def image(width: int, height: int, mode: str, fmt: str, seed: int) -> bytes:
        noise = np.random.default_rng(seed).integers(0, 256, (height, width, 4), np.uint8)
        return encode(Image.fromarray(noise, "RGBA").convert(mode), fmt)

    def images(fmt: str, modes: tuple[str, ...]) -> st.SearchStrategy[bytes]:
        return st.builds(image, st.integers(1, 40), st.integers(1, 40), st.sampled_from(modes),
                         st.just(fmt), st.integers(0, 2**16))

    aliases = {"image/jpeg": ("image/jpg", "image/pjpeg"), "image/bmp": ("image/x-ms-bmp",)}
    for media, fmt, modes in [
        ("image/png", "PNG", ("RGB", "RGBA", "L", "P")), ("image/jpeg", "JPEG", ("RGB", "L")),
        ("image/webp", "WEBP", ("RGB", "RGBA")), ("image/gif", "GIF", ("P", "L")),
        ("image/bmp", "BMP", ("RGB", "L")), ("image/tiff", "TIFF", ("RGB", "RGBA")),
    ]:
        schemathesis.openapi.media_type(media, images(fmt, modes),
                                        aliases=aliases.get(media, ()))
    schemathesis.openapi.format("binary", images("PNG", ("RGB", "RGBA")))


# -- the corpus ----------------------------------------------------------------------------------

def corpus(limits: Limits, *, style: str, factor: int) -> list[Case]:
    """At least 40 cases for a server running with `limits`, a style and a super-resolution
    factor it has loaded."""
    side = int(limits.max_pixels ** 0.5)
    strip_refused = limits.max_pixels < 16 * 100_000
    png_type = (("Content-Type", "image/png"),)
    mp_type = (("Content-Type", f"multipart/form-data; boundary={BOUNDARY}"),)

    def file(name: str, body: bytes, status: int, code: str | None, why: str,
             content_type: str | None = "image/png") -> Case:
        headers = (("Content-Type", content_type),) if content_type else ()
        return Case(name, "file", status, code, why, headers=headers, body=body)

    def mp(name: str, body: bytes, status: int, code: str | None, why: str) -> Case:
        return Case(name, "multipart", status, code, why, headers=mp_type, body=body)

    def param(name: str, target: str, status: int, code: str | None, why: str,
              method: str = "POST") -> Case:
        return Case(name, "params", status, code, why, method=method, target=target,
                    body=png(32, 32) if method == "POST" else b"",
                    headers=png_type if method == "POST" else ())

    bad, big, media, ok = "invalid_image", "image_too_large", "unsupported_media_type", None
    strip_status, strip_expect = (413, big) if strip_refused else (200, ok)
    cases = [
        # Broken files
        file("zero-bytes", b"", 400, bad, "nothing to decode"),
        file("truncated-png", truncated(png()), 400, bad, "IDAT cut in half"),
        file("truncated-jpeg", truncated(jpeg()), 400, bad, "scan data cut in half"),
        file("truncated-webp", truncated(webp()), 400, bad, "VP8 data cut in half",
             "image/webp"),
        file("corrupted-png", corrupted(png()), 400, bad, "random bytes in IDAT: CRC fails"),
        file("corrupted-jpeg", corrupted(jpeg()), 400, bad,
             "random bytes in the scan: libjpeg reports a broken stream", "image/jpeg"),
        file("corrupted-webp", corrupted(webp()), 200, ok,
             "random bytes in VP8 data, which has no checksum: decodes, to garbage",
             "image/webp"),
        file("png-header-only", png_claiming(64, 64), 400, bad, "header says 64x64, no data"),
        file("png-zero-width", png_claiming(0, 64), 400, bad, "a 0-pixel-wide image"),
        file("random-bytes", np.random.default_rng(3).integers(0, 256, 100_000, np.uint8)
             .tobytes(), 400, bad, "noise", "image/jpeg"),
        # Not images
        file("text", TEXT, 415, media, "text/plain is not an image type", "text/plain"),
        file("text-as-png", TEXT, 400, bad, "text labelled image/png: sniffed, not trusted"),
        file("html", HTML, 415, media, "text/html", "text/html"),
        file("html-as-png", HTML, 400, bad, "HTML labelled image/png"),
        file("svg", SVG, 415, media, "vector images are not accepted", "image/svg+xml"),
        file("svg-as-png", SVG, 400, bad, "SVG labelled image/png"),
        file("pdf", PDF, 415, media, "application/pdf", "application/pdf"),
        file("pdf-as-png", PDF, 400, bad, "PDF labelled image/png"),
        file("octet-stream", png(), 415, media, "a raw body must say which image type",
             "application/octet-stream"),
        file("no-content-type", png(), 415, media, "no Content-Type", None),
        # Animations
        file("animated-gif", frames("GIF", duration=100, loop=0), 415, media,
             "which frame to use would be a guess", "image/gif"),
        file("apng", frames("PNG", duration=100), 415, media, "animated PNG"),
        file("animated-webp", frames("WEBP", duration=100), 415, media, "animated WebP",
             "image/webp"),
        file("multipage-tiff", frames("TIFF"), 415, media, "three pages", "image/tiff"),
        # Odd but valid
        file("cmyk-jpeg", encode(rgb().convert("CMYK"), "JPEG"), 200, ok, "converted to RGB",
             "image/jpeg"),
        file("ycck-jpeg", ycck_jpeg(), 200, ok, "Adobe YCCK, converted to RGB", "image/jpeg"),
        file("png-16bit-gray", png16(64, 64, 1), 200, ok, "scaled to 8 bits"),
        file("png-16bit-rgb", png16(64, 64, 3), 200, ok, "scaled to 8 bits"),
        file("png-16bit-rgba", png16(64, 64, 4), 200, ok, "alpha carried over"),
        file("png-palette-trns", encode(rgb().quantize(16), "PNG", transparency=0), 200, ok,
             "palette with a transparent entry"),
        file("gif-one-frame", encode(rgb().convert("P"), "GIF"), 200, ok, "a single frame",
             "image/gif"),
        file("bmp", encode(rgb(), "BMP"), 200, ok, "BMP", "image/bmp"),
        file("tiff", encode(rgb(), "TIFF"), 200, ok, "TIFF", "image/tiff"),
        file("jpeg-labelled-png", jpeg(), 200, ok, "format sniffed from the bytes"),
        file("jpeg-icc-1mb", jpeg(icc_profile=np.random.default_rng(5).integers(
            0, 256, 1_000_000, np.uint8).tobytes()), 200, ok,
             "1 MB ICC profile in 16 APP2 segments: carried, not parsed", "image/jpeg"),
        file("png-icc-4mb", huge_icc_png(4_000_000), 400, bad,
             "iCCP decompressing to 4 MB: Pillow refuses metadata over 1 MB"),
        file("jpeg-exif-64kb", jpeg(exif=exif_with(size=65_000, orientation=6)), 200, ok,
             "the largest EXIF a JPEG segment holds; orientation applied", "image/jpeg"),
        file("jpeg-exif-loop", jpeg(exif=exif_with(size=200, self_loop=True)), 200, ok,
             "an IFD chain that points back at itself", "image/jpeg"),
        file("jpeg-exif-orientation-99", jpeg(exif=exif_with(size=100, orientation=99)), 200,
             ok, "a nonsense orientation is ignored", "image/jpeg"),
        file("png-exif-2mb", png_with_exif_chunk(2_000_000), 200, ok, "2 MB eXIf chunk"),
        file("1x1", png(1, 1), 200, ok, "padded for the network, cropped back"),
        file("1x100000", png(1, 100_000), strip_status, strip_expect,
             "a strip: padded to 16 x 100000 for the network, counted as such"),
        file("header-100000x100000", png_claiming(100_000, 100_000), 413, big,
             "refused from the header, nothing decoded"),
        file("png-bomb-400mp", png_bomb(20_000), 413, big,
             "a few KB that decode to 20000 x 20000"),
        file("jpeg-claims-65500x65500", jpeg_claiming(65_500, 65_500), 413, big,
             "JPEG frame header", "image/jpeg"),
        file("gif-claims-65535x65535", gif_claiming(65_535, 65_535), 413, big,
             "GIF logical screen", "image/gif"),
        file("bmp-claims-50000x50000", bmp_claiming(50_000, 50_000), 413, big,
             "BMP header", "image/bmp"),
        file("at-the-pixel-limit", png(side, side), 200, ok,
             f"{side} x {side}: the largest square allowed"),
        file("just-over-the-pixel-limit", png(side + 1, side + 1), 413, big,
             "one row and column more"),
        # Multipart
        mp("multipart-no-file", multipart(("note", None, None, b"hello")), 422,
           "invalid_parameter", "no field named image"),
        mp("multipart-two-images", multipart(("image", "a.png", "image/png", png(seed=1)),
                                             ("image", "b.png", "image/png", png(seed=2))),
           422, "invalid_parameter", "which one was meant would be a guess"),
        mp("multipart-image-and-extra", multipart(("image", "a.png", "image/png", png()),
                                                  ("extra", "b.bin", None, b"\x00" * 1000)),
           200, ok, "other fields are ignored"),
        mp("multipart-traversal-filename",
           multipart(("image", "../../../etc/passwd", "image/png", png())), 200, ok,
           "the file name is never used"),
        mp("multipart-wrong-part-type", multipart(("image", "a.txt", "text/plain", TEXT)), 415,
           media, "the part says text/plain"),
        mp("multipart-empty-image", multipart(("image", "a.png", "image/png", b"")), 400, bad,
           "an empty part"),
        mp("multipart-unterminated", multipart(("image", "a.png", "image/png", png()),
                                               close=False), 400, "bad_request",
           "no closing boundary: a cut-off upload"),
        Case("multipart-no-boundary", "multipart", 400, "bad_request",
             "multipart/form-data without a boundary",
             headers=(("Content-Type", "multipart/form-data"),), body=png()),
        # Parameters
        param("style-missing", "/v1/stylize", 422, "invalid_parameter", "style is required"),
        param("style-unknown", "/v1/stylize?style=nope", 404, "unknown_model",
              "lists what exists"),
        param("style-65-chars", "/v1/stylize?style=" + "a" * 65, 422, "invalid_parameter",
              "max_length 64"),
        param("style-traversal", "/v1/stylize?style=..%2F..%2Fetc%2Fpasswd", 404,
              "unknown_model", "a name is looked up, never opened"),
        param("style-nul-and-unicode", "/v1/stylize?style=%00%F0%9F%92%A9", 404,
              "unknown_model", "bytes that are no name"),
        param("factor-text", "/v1/superres?factor=four", 422, "invalid_parameter",
              "not an integer"),
        param("factor-zero", "/v1/superres?factor=0", 422, "invalid_parameter", "ge=1"),
        param("factor-negative", "/v1/superres?factor=-4", 422, "invalid_parameter", "ge=1"),
        param("factor-1e30", "/v1/superres?factor=" + "1" + "0" * 30, 422, "invalid_parameter",
              "le=64"),
        param("factor-unserved", "/v1/superres?factor=3", 404, "unknown_model",
              "lists the factors served"),
        param("quality-zero", "/v1/stylize?style={style}&format=jpeg&quality=0", 422,
              "invalid_parameter", "1..100"),
        param("quality-101", "/v1/stylize?style={style}&format=webp&quality=101", 422,
              "invalid_parameter", "1..100"),
        param("quality-text", "/v1/stylize?style={style}&quality=high", 422,
              "invalid_parameter", "not an integer"),
        param("format-gif", "/v1/stylize?style={style}&format=gif", 422, "invalid_parameter",
              "png, jpeg, webp"),
        param("style-twice", "/v1/stylize?style=nope&style={style}", 200, ok,
              "the last value wins"),
        param("get-on-post", "/v1/stylize?style={style}", 405, "method_not_allowed",
              "POST only", method="GET"),
        param("unknown-path", "/v1/admin", 404, "not_found", "no such route", method="GET"),
        # HTTP: sizes and speeds
        Case("url-over-limit", "http", 414, "url_too_long",
             f"{limits.max_url_bytes + 100}-byte URL",
             target="/v1/stylize?style={style}&pad=" + "a" * limits.max_url_bytes,
             headers=png_type, body=png(32, 32)),
        Case("header-over-limit", "http", 431, "headers_too_large",
             f"one {limits.max_header_bytes + 100}-byte header",
             headers=(*png_type, ("X-Junk", "a" * (limits.max_header_bytes + 100))),
             body=png(32, 32)),
        Case("many-headers", "http", 431, "headers_too_large", "2000 small headers",
             headers=(*png_type, *((f"X-H{i}", "v" * 8) for i in range(2000))),
             body=png(32, 32)),
        Case("endless-header", "http", 431, "headers_too_large",
             "a header value that never ends: refused by the HTTP protocol, not buffered",
             headers=png_type, mode="endless-head"),
        Case("head-never-finished", "http", 408, "request_timeout",
             f"half a head, then silence: {limits.header_timeout_s:g} s head timeout",
             mode="open-head"),
        Case("bad-content-length", "http", 400, None,
             "Content-Length: abc; refused by the HTTP parser (plain text)",
             headers=(*png_type, ("Content-Length", "abc")), body=png(32, 32)),
        Case("declared-1gb", "http", 413, "payload_too_large",
             "Content-Length over the limit: refused before reading", headers=png_type,
             declared_length=1_000_000_000),
        Case("chunked-over-limit", "http", 413, "payload_too_large",
             "no length announced; reading stops at the limit", headers=png_type,
             body=b"\x00" * (limits.max_body_bytes + 65536), chunked=True),
        Case("body-slower-than-timeout", "http", 408, "request_timeout",
             f"10 of 1000 bytes, then silence: {limits.body_timeout_s:g} s body timeout",
             headers=png_type, body=png(32, 32)[:10], declared_length=1000, mode="stall"),
        Case("accept-garbage", "http", 200, ok, "unparseable Accept: PNG",
             headers=(*png_type, ("Accept", ";;;q=abc,,*/*;q=-1")), body=png(32, 32)),
        Case("request-id-garbage", "http", 200, ok, "an invalid X-Request-ID is replaced",
             headers=(*png_type, ("X-Request-ID", "<script>" * 100)), body=png(32, 32)),
    ]
    return [_fill(c, style, factor) for c in cases]


def _fill(case: Case, style: str, factor: int) -> Case:
    from dataclasses import replace

    return replace(case, target=case.target.replace("{style}", style)
                   .replace("{factor}", str(factor)))


# -- playing a case ------------------------------------------------------------------------------

async def send(host: str, port: int, case: Case, *, timeout_s: float = 60.0) -> Outcome:
    """Play `case` on a new connection; the answer, or why there was none."""
    started = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (OSError, TimeoutError) as e:
        return Outcome(None, None, time.monotonic() - started, error=f"connect: {e!r}")
    feeder: asyncio.Task[None] | None = None
    try:
        head = _head(case, host, port)
        if case.mode == "open-head":
            writer.write(head[: len(head) // 2])
        elif case.mode == "endless-head":
            writer.write(head.rstrip(b"\r\n") + b"\r\nX-Endless: ")
            feeder = asyncio.create_task(_endless(writer))
        elif case.chunked:
            writer.write(head + b"".join(
                f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
                for piece in _pieces(case.body, 65536)) + b"0\r\n\r\n")
        else:
            writer.write(head + case.body)
        if feeder is None:
            await writer.drain()
        status, headers, body = await asyncio.wait_for(_response(reader), timeout_s)
        return Outcome(status, _code(headers, body), time.monotonic() - started, headers)
    except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as e:
        return Outcome(None, None, time.monotonic() - started, error=repr(e))
    finally:
        if feeder is not None:
            feeder.cancel()
        writer.close()


def _head(case: Case, host: str, port: int) -> bytes:
    lines = [f"{case.method} {case.target} HTTP/1.1", f"Host: {host}:{port}"]
    names = {name.lower() for name, _ in case.headers}
    lines += [f"{name}: {value}" for name, value in case.headers]
    if case.chunked:
        lines.append("Transfer-Encoding: chunked")
    elif "content-length" not in names and (case.method == "POST" or case.body):
        length = case.declared_length if case.declared_length is not None else len(case.body)
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _endless(writer: asyncio.StreamWriter) -> None:
    """Feed a header value until the server stops reading (at most 64 MB)."""
    try:
        for _ in range(4096):
            writer.write(b"a" * 16384)
            await writer.drain()
    except (OSError, asyncio.CancelledError):
        pass


def _pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


async def _response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return int(status_line.split()[1]), headers, body


def _code(headers: dict[str, str], body: bytes) -> str | None:
    if not headers.get("content-type", "").startswith("application/json"):
        return None
    import json

    try:
        return json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
