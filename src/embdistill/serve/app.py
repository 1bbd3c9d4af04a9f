"""The search page's web app (FastAPI): one or two embedded galleries searched with a dropped image.

Routes: ``GET /`` the page (plain HTML/CSS/JS shipped in ``static/``, nothing from a
CDN), ``GET /api/info`` the galleries, ``POST /api/search`` (multipart form, field
``image``, optional ``k``) the neighbours in every gallery, ``GET /thumb/{gallery}/{id}``
a gallery image's thumbnail, ``GET /healthz``. Errors are JSON ``{"error": message}``
with a 4xx status, so the page shows the message and the server stays up.
"""
from __future__ import annotations

import io
import re
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from embdistill.data.imagefiles import class_name, display_name, thumbnail
from embdistill.search import Encoder, Gallery, Hit, load_gallery
from embdistill.serve.uploads import UploadError, decode_upload, describe_size

__all__ = ["BodyLimit", "Side", "create_app", "guess_class", "load_side"]

STATIC = Path(__file__).resolve().parent / "static"
THUMB_SIZES = (64, 512)  # smallest and largest thumbnail side served
_MULTIPART_SLACK = 64 * 1024  # form boundaries and headers around the file
_DRAIN_LIMIT = 64 * 2**20  # a refused body up to this size is read and dropped before answering


@dataclass
class Side:
    """One gallery with the model that embedded it: one column of results on the page."""

    name: str
    gallery: Gallery
    encoder: Encoder
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def pairing(self) -> str | None:
        """The line saying that a student queries its teacher's gallery here (Gallery.pairing), else None."""
        return self.gallery.pairing(self.encoder)

    @property
    def classes(self) -> list[str]:
        return sorted({class_name(f) for f in self.gallery.files})

    def describe(self) -> dict[str, Any]:
        meta = self.encoder.metadata
        return {
            "name": self.name,
            "gallery": str(self.gallery.path),
            "images": self.gallery.size,
            "model": str(self.encoder.source),
            "format": self.encoder.format,
            "backbone": meta.backbone,
            "image_size": meta.image_size,
            "dim": meta.embedding_dim,
            **({"pairing": self.pairing} if self.pairing else {}),
        }


def load_side(
    gallery: str | Path | Gallery, name: str | None = None, model: str | Path | None = None, threads: int | None = None,
    *, allow_other_space: bool = False,
) -> Side:
    """A gallery (.faiss from `embdistill index`, or .npy from `embdistill embed`, or one already loaded) and its
    model, which must embed into the gallery's space unless ``allow_other_space`` (see
    :meth:`~embdistill.search.Gallery.encoder`)."""
    loaded = gallery if isinstance(gallery, Gallery) else load_gallery(gallery)
    encoder = loaded.encoder(model, threads, allow_other_space=allow_other_space)
    if name is None:  # runs/x/student/last.pt -> "student"; runs/x/student -> "student"
        source = Path(encoder.source)
        name = source.parent.name if source.is_file() else source.name
    return Side(name, loaded, encoder)


def guess_class(filename: str, classes: list[str]) -> str | None:
    """The class whose name starts the file's name, ignoring case and punctuation (CUB's
    ``Black_Footed_Albatross_0001_796111.jpg`` is of ``001.Black_footed_Albatross``); the longest match wins."""
    def squash(text: str) -> str:
        return re.sub(r"[^a-z0-9]", "", text.lower())

    stem = squash(Path(filename).stem)
    matches = [c for c in classes if squash(display_name(c)) and stem.startswith(squash(display_name(c)))]
    return max(matches, key=lambda c: len(squash(display_name(c))), default=None)


class BodyLimit:
    """ASGI middleware: refuse a request body over ``limit`` bytes with 413 before anything parses it.

    Checks Content-Length first, then counts the bytes of a chunked body as they arrive;
    the accepted body is replayed to the app from memory.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], limit: int, file_limit: int) -> None:
        self.app, self.limit, self.file_limit = app, limit, file_limit

    async def __call__(self, scope: MutableMapping[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT"):
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._refuse(int(length), scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self._refuse(size, scope, receive, send, streamed=True, pending=message.get("more_body", False))
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, size: int, scope: MutableMapping[str, Any], receive: Callable, send: Callable,
                      *, streamed: bool = False, pending: bool = True) -> None:
        """Answer 413. Read (and drop) the rest of a body of reasonable size first: a client still
        sending when the server closes the connection gets a reset instead of this message."""
        drained = 0
        while pending and drained < _DRAIN_LIMIT:
            chunk = await receive()
            if chunk["type"] == "http.disconnect":
                return None
            drained += len(chunk.get("body", b""))
            pending = chunk.get("more_body", False)
        text = (f"the upload is {'more than ' if streamed else ''}{describe_size(size)}, "
                f"over the {describe_size(self.file_limit)} upload limit")
        response = JSONResponse({"error": text}, status_code=413, headers={"Connection": "close"})
        await response(scope, receive, send)


def _hit(side_index: int, hit: Hit) -> dict[str, Any]:
    return {
        "rank": hit.rank,
        "id": hit.id,
        "score": round(hit.score, 6),
        "distance": round(hit.distance, 6),
        "class": hit.class_name,
        "label": display_name(hit.class_name),
        "file": Path(hit.path).name,
        "path": hit.path,
        "thumb": f"/thumb/{side_index}/{hit.id}",
    }


def create_app(sides: list[Side], *, max_upload_bytes: int = 10_000_000, default_k: int = 8, max_k: int = 50) -> FastAPI:
    """The app over ``sides`` (the first is the main gallery, a second one is compared side by side)."""
    if not 1 <= len(sides) <= 2:
        raise ValueError(f"the page shows one or two galleries, got {len(sides)}")
    if not 1 <= default_k <= max_k:
        raise ValueError(f"need 1 <= default k <= max k, got {default_k}, {max_k}")
    app = FastAPI(title="embdistill search", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit, limit=max_upload_bytes + _MULTIPART_SLACK, file_limit=max_upload_bytes)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    classes = sorted({c for side in sides for c in side.classes})

    @app.exception_handler(UploadError)
    async def upload_error(_: Request, err: UploadError) -> JSONResponse:
        return JSONResponse({"error": err.message}, status_code=err.status)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, err: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(err.detail)}, status_code=err.status_code)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/info")
    async def info() -> dict[str, Any]:
        return {
            "galleries": [side.describe() for side in sides],
            "classes": [{"class": c, "label": display_name(c)} for c in classes],
            "k": default_k,
            "max_k": max_k,
            "max_upload_bytes": max_upload_bytes,
            "max_upload": describe_size(max_upload_bytes),
        }

    @app.post("/api/search")
    async def search(request: Request) -> dict[str, Any]:
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise UploadError(415, "send the image as a multipart form (field 'image'), as the page and `curl -F image=@photo.jpg` do")
        form = await request.form(max_files=1, max_fields=4)
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise UploadError(400, "no file in the upload: send the image as the form field 'image'")
        k = _parse_k(form.get("k"), default_k, max_k)
        data = await upload.read()
        image = await run_in_threadpool(decode_upload, data, upload.filename or "", max_upload_bytes)
        results = await run_in_threadpool(_search_all, sides, image, k)
        return {
            "query": {"file": upload.filename, "bytes": len(data), "width": image.width, "height": image.height,
                      "guessed_class": guess_class(upload.filename or "", classes)},
            "k": k,
            "results": results,
        }

    @app.get("/thumb/{side_index}/{item}")
    async def thumb(side_index: int, item: int, size: int = 160) -> Response:
        if not 0 <= side_index < len(sides) or not 0 <= item < sides[side_index].gallery.size:
            raise HTTPException(404, f"no gallery image {side_index}/{item}")
        size = min(max(size, THUMB_SIZES[0]), THUMB_SIZES[1])
        data = await run_in_threadpool(_thumbnail_jpeg, sides[side_index].gallery.files[item], size)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    return app


def _parse_k(value: Any, default: int, max_k: int) -> int:
    if value is None or value == "":
        return default
    try:
        k = int(str(value))
    except ValueError:
        raise UploadError(400, f"k must be a whole number between 1 and {max_k}, got {value!r}") from None
    if not 1 <= k <= max_k:
        raise UploadError(400, f"k must be between 1 and {max_k}, got {k}")
    return k


def _search_all(sides: list[Side], image: Image.Image, k: int) -> list[dict[str, Any]]:
    """Embed the image with each gallery's model and search that gallery (one call per model at a time)."""
    results = []
    for n, side in enumerate(sides):
        start = time.perf_counter()
        with side.lock:
            vector = side.encoder.embed_images([image])
        hits = side.gallery.search(vector, k)[0]
        results.append({**side.describe(), "ms": round(1000 * (time.perf_counter() - start), 1),
                        "hits": [_hit(n, h) for h in hits]})
    return results


@lru_cache(maxsize=1024)
def _thumbnail_jpeg(path: str, size: int) -> bytes:
    buffer = io.BytesIO()
    thumbnail(path, size).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()
