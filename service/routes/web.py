"""The web page at / (service/static: plain HTML, CSS and JS, no build step) and the style
thumbnails it shows.

Thumbnails are made in memory from the paintings in `Settings.style_images_dir`
(<style>.jpg, .jpeg, .png or .webp); nothing is copied into the repository or written to disk.
"""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Response
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image

from model_store import StoreError
from service import errors
from service.deps import ServicesDep
from service.registry import Registry
from service.schemas import ErrorResponse

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
THUMBNAIL_PX = 160           # longest side
PAINTING_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")

router = APIRouter()


def static_files() -> StaticFiles:
    """The page's scripts and styles, mounted at /static."""
    return StaticFiles(directory=STATIC_DIR)


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html",
                        headers={"Cache-Control": "no-cache"})


@router.get("/v1/styles/{name}/thumbnail", response_class=Response, tags=["transform"],
            summary="A small JPEG of a style's painting",
            responses={200: {"content": {"image/jpeg": {}}},
                       404: {"model": ErrorResponse,
                             "description": "unknown style, or no painting for it"}})
def thumbnail(name: Annotated[str, PathParam(min_length=1, max_length=64)],
              services: ServicesDep) -> Response:
    """The painting the style network was trained on, at most 160 px a side: the one the store
    keeps with the model, else `SERVICE_STYLE_IMAGES_DIR`'s. (A plain `def`: FastAPI runs it in
    a thread, so the first decode of a painting never blocks the loop.)"""
    available = services.registry.styles()     # a multi-style network's styles included
    if name not in available:
        raise errors.UnknownModel(f"unknown style {name!r}; available: "
                                  f"{', '.join(available) or 'none'}")
    style = available[available.index(name)]   # a loaded style's name, not the client's text
    kept = kept_painting(services.registry, style)
    painting = find_painting(services.settings.style_images_dir, style)
    if kept is not None:
        body = _thumbnail(kept)
    elif painting is not None:
        body = _thumbnail(painting, painting.stat().st_mtime_ns)
    else:
        return errors.error_response(404, "no_thumbnail",
                                     f"no painting for style {name!r} is configured")
    return Response(body, media_type="image/jpeg",
                    headers={"Cache-Control": "public, max-age=86400"})


def find_painting(folder: Path | None, style: str) -> Path | None:
    """<folder>/<style>.<jpg|jpeg|png|webp>, the first that exists; None without a folder.
    `style` is the name of a loaded model, never raw client text, and must stay in `folder`."""
    if folder is None:
        return None
    for suffix in PAINTING_SUFFIXES:
        path = folder / f"{style}{suffix}"
        if path.parent == folder and path.is_file():
            return path
    return None


def kept_painting(registry: Registry, style: str) -> bytes | None:
    """The painting the store keeps with the model `style`, else with a multi-style network
    holding it; None when neither does."""
    places = [(style, None), *((m.name, style) for m in registry.multistyle()
                               if style in m.styles)]
    for name, within in places:
        try:
            kept = registry.store.painting(name, within)
        except StoreError:     # no model of that name: a multi-style network's style
            continue
        if kept is not None:
            return kept
    return None


@lru_cache(maxsize=64)
def _thumbnail(source: Path | bytes, version: int = 0) -> bytes:
    """The JPEG thumbnail of a file (cached per `version`, its mtime) or of an image's bytes."""
    im: Image.Image   # the opened file, then converted copies of it
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
        im.draft("RGB", (THUMBNAIL_PX, THUMBNAIL_PX))   # JPEG: decode at a reduced size
        im = im.convert("RGB")
        im.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=85)
    return buf.getvalue()
