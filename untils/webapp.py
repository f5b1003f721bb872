"""The local cropping web page and its JSON API (FastAPI on uvicorn; README.md, "The web page").

Its one rule: the model is touched only by the :class:`untils.crop_worker.CropWorker` thread, and
every bad request gets a 4xx ``{"error": "one sentence"}`` while the server keeps serving.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import re
import zipfile
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from matplotlib import colormaps
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from untils.atomic import write_atomic
from untils.boxes import box_from_text
from untils.candidates import parse_aspect_ratio
from untils.config import parse_bool
from untils.crop_worker import CropJob, CropWorker, PhotoRanking
from untils.personal_routes import PersonalService, add_personal_routes
from untils.photo_store import PhotoStore, UnknownPhotoError
from untils.photos import (
    PhotoError,
    PhotoHeader,
    checked_person_box,
    encode_crop,
    open_upright,
    save_format,
    to_rgb8,
    write_verified,
)
from untils.ratings_store import RatingError, checked_user

STATIC_DIR = Path(__file__).resolve().parent / "web_static"
PAGE_RATIOS = ("free", "1:1", "4:5", "3:2", "16:9", "9:16")
MAX_TOP_K = 50
MAX_RATIOS = 8
PREVIEW_SIDE = 1600
FORM_OVERHEAD = 64 * 1024  # multipart boundaries and the small fields around the photo
SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class RequestError(Exception):
    """A bad request: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class UploadTooLarge(Exception):
    """The request body went past the upload limit while it was read."""


@dataclass(frozen=True)
class ServerLimits:
    """What one upload may be: its size in bytes and its pixels."""

    max_upload_bytes: int
    max_pixels: int

    @property
    def max_upload_mb(self) -> float:
        return self.max_upload_bytes / 2**20


class BodyLimit:
    """ASGI middleware: a body longer than ``limit`` bytes (declared, or counted as it arrives) is
    refused with 413 before the server keeps more of it."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], limit: int, message: str) -> None:
        self.app, self.limit, self.message = app, limit, message

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await error_response(413, self.message)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise UploadTooLarge(self.message)
            return message

        await self.app(scope, counted, send)


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def safe_name(filename: str | None) -> str:
    """The upload's file name for download names only (never opened): its base name in safe characters."""
    base = SAFE_NAME.sub("_", Path(filename or "").name).strip("._")[:80]
    return base or "photo"


def ratio_slug(ratio: str) -> str:
    return ratio.replace(":", "x").replace("/", "_")


# ----------------------------------------------------------------------------------------------
# The request's options
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CropOptions:
    aspect_ratios: tuple[str, ...]
    top_k: int
    human_box: tuple[float, float, float, float] | None
    detect_human: bool
    keep_person: bool
    user: str | None = None  # rank for this user too (their model, or the prior's crops to rate)


def parse_ratios(text: str | None, worker: CropWorker) -> tuple[str, ...]:
    ratios = tuple(part.strip().lower() for part in (text or "any").split(",") if part.strip())
    if not ratios or len(ratios) > MAX_RATIOS:
        raise RequestError(400, f"aspect_ratio {text!r}: give 1 to {MAX_RATIOS} ratios separated by commas")
    seen: dict[float | None, str] = {}
    for ratio in ratios:
        try:
            value = parse_aspect_ratio(ratio)
            worker.cropper.candidates(ratio)
        except ValueError as error:
            raise RequestError(400, f"aspect_ratio: {error}") from None
        if value in seen:
            raise RequestError(400, f"aspect_ratio {text!r}: {seen[value]!r} and {ratio!r} are the same ratio")
        seen[value] = ratio
    return ratios


def parse_box(text: str) -> tuple[float, float, float, float]:
    box = box_from_text(text)
    if box is None:
        raise RequestError(400, f"human_box {text!r}: expected four numbers x1,y1,x2,y2 in the photo's pixels")
    return box


def parse_flag(name: str, text: str | None) -> bool:
    if text is None or text == "":
        return False
    try:
        return parse_bool(text)
    except (ValueError, TypeError, argparse.ArgumentTypeError):
        raise RequestError(400, f"{name} {text!r}: expected true or false") from None


def parse_options(form: Any, worker: CropWorker) -> CropOptions:
    def field(name: str) -> str | None:
        value = form.get(name)
        if value is not None and not isinstance(value, str):
            raise RequestError(400, f"{name}: expected a text field, got a file")
        return value

    top_k_text = field("top_k") or "3"
    try:
        top_k = int(top_k_text)
    except ValueError:
        top_k = 0
    if not 1 <= top_k <= MAX_TOP_K:
        raise RequestError(400, f"top_k {top_k_text!r}: expected a whole number from 1 to {MAX_TOP_K}")
    box_text = field("human_box")
    human_box = parse_box(box_text) if box_text else None
    detect = parse_flag("detect_human", field("detect_human"))
    if detect and human_box is not None:
        raise RequestError(400, "give either human_box or detect_human=true, not both")
    if detect and worker.detector is None:
        raise RequestError(400, "detect_human: this server runs without a person detector")
    user = field("user") or None
    if user is not None:
        try:
            user = checked_user(user)
        except RatingError as error:
            raise RequestError(400, str(error)) from None
    return CropOptions(
        parse_ratios(field("aspect_ratio"), worker),
        top_k,
        human_box,
        detect,
        parse_flag("keep_person", field("keep_person")),
        user,
    )


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------


def ranking_json(photo_id: str, name: str, ranking: PhotoRanking, top_k: int, model: dict) -> dict[str, Any]:
    """The ``/api/crop`` answer: crop.py's JSON ``results`` schema, one entry per ratio."""
    results = []
    for entry in ranking.results:
        best = zip(entry.boxes[:top_k], entry.scores[:top_k], strict=True)
        crops = [
            {
                "rank": rank,
                "box": list(box),
                "score": score,
                "width": box[2] - box[0],
                "height": box[3] - box[1],
                "url": f"/api/photos/{photo_id}/crops/{entry.aspect_ratio}/{rank}",
            }
            for rank, (box, score) in enumerate(best, start=1)
        ]
        result: dict[str, Any] = {
            "aspect_ratio": entry.aspect_ratio,
            "crops": crops,
            "ranked": [
                {"box": list(box), "score": score} for box, score in zip(entry.boxes, entry.scores, strict=True)
            ],
            "candidates": entry.candidates,
        }
        if entry.note is not None:
            result["note"] = entry.note
        results.append(result)
    return {
        "photo_id": photo_id,
        "name": name,
        "width": ranking.width,
        "height": ranking.height,
        "coordinates": "pixels of the upright photo (EXIF orientation applied), [x1, y1, x2, y2]",
        "person": ranking.person.to_json(),
        "results": results,
        "heat_map": f"/api/photos/{photo_id}/heat_map.png" if ranking.heat_map is not None else None,
        "preview": f"/api/photos/{photo_id}/preview.jpg",
        "model": model,
    }


def heat_map_png(heat_map: np.ndarray) -> Image.Image:
    """The heat map (values in [0, 1]) in the jet colours crop.py's figures use, 0 blue to 1 red."""
    colours = colormaps["jet"](np.clip(heat_map, 0, 1))[..., :3]
    return Image.fromarray((colours * 255).round().astype(np.uint8), "RGB")


class CropService:
    """What the routes do, off the event loop: store and decode uploads, rank through the worker,
    cut crops from the stored photo."""

    def __init__(
        self, worker: CropWorker, store: PhotoStore, limits: ServerLimits, personal: PersonalService | None = None
    ) -> None:
        self.worker, self.store, self.limits, self.personal = worker, store, limits, personal

    def decode(self, content: bytes, name: str) -> tuple[str, Image.Image]:
        """Store the upload and decode it upright; a bad file is removed again and refused."""
        if not content:
            raise RequestError(400, f"{name}: the file is empty")
        photo_id = self.store.add(content)
        path = self.store.photo_file(photo_id)
        try:
            image, _ = open_upright(path, self.limits.max_pixels)
        except PhotoError as error:
            self.store.remove(photo_id)
            message = str(error).replace(str(path), name)
            if message.startswith("not a readable image"):
                message = "not an image this server can read (JPEG, PNG, WebP, TIFF, BMP, GIF)"
            status = 413 if message.startswith("too large") else 415 if message.startswith("not an image") else 422
            raise RequestError(status, f"{name}: {message}") from None
        return photo_id, image

    async def crop(self, content: bytes, filename: str | None, options: CropOptions) -> dict[str, Any]:
        name = safe_name(filename)
        photo_id, image = await run_in_threadpool(self.decode, content, name)
        try:
            return await self._answer(photo_id, name, image, options)
        except BaseException:  # a refused or failed request keeps nothing
            self.store.remove(photo_id)
            raise

    async def rerank(self, photo_id: str, options: CropOptions) -> dict[str, Any]:
        """A stored photo ranked again (other options or user) without uploading it again."""
        name = (await run_in_threadpool(self.store.ranking, photo_id))["name"]
        image, _ = await run_in_threadpool(self._open, photo_id)
        return await self._answer(photo_id, name, image, options)

    async def _answer(self, photo_id: str, name: str, image: Image.Image, options: CropOptions) -> dict[str, Any]:
        ranking = await self._rank(image, options)
        body = ranking_json(photo_id, name, ranking, options.top_k, self.worker.cropper.describe())
        if options.user is not None:
            if self.personal is None:
                raise RequestError(400, "user: this server does not personalize (start it with --pic-prior or --demo)")
            body["personal"] = await run_in_threadpool(
                self.personal.ranking_json, options.user, photo_id, image, ranking.person.box, options.top_k
            )
        await run_in_threadpool(self.save, photo_id, body, ranking.heat_map)
        return body

    async def _rank(self, image: Image.Image, options: CropOptions) -> PhotoRanking:
        human_box = options.human_box
        if human_box is not None:
            try:
                human_box = checked_person_box(human_box, image.width, image.height)
            except PhotoError as error:
                raise RequestError(400, f"human_box: {error}") from None
        job = CropJob(image, options.aspect_ratios, human_box, options.detect_human, options.keep_person)
        try:
            return await asyncio.wrap_future(self.worker.submit(job))
        except (PhotoError, ValueError) as error:
            raise RequestError(422, str(error)) from None

    def save(self, photo_id: str, body: dict[str, Any], heat_map: np.ndarray | None) -> None:
        folder = self.store.path(photo_id)
        for cut in folder.glob("crop-*"):  # a photo ranked again: the crops cut from its last ranking go
            cut.unlink(missing_ok=True)
        if heat_map is not None:
            write_atomic(folder / "heat_map.png", lambda tmp: heat_map_png(heat_map).save(tmp, format="PNG"))
        self.store.save_ranking(photo_id, body)

    def _open(self, photo_id: str) -> tuple[Image.Image, PhotoHeader]:
        try:
            return open_upright(self.store.photo_file(photo_id), self.limits.max_pixels)
        except PhotoError as error:  # it was read when uploaded: changed or removed meanwhile
            raise RequestError(410, f"photo {photo_id} can no longer be read ({error})") from None

    def crop_file(self, photo_id: str, ratio: str, rank: int) -> tuple[Path, str]:
        """The file of a crop at full resolution (cut once, then kept beside the photo) and its download name."""
        ranking = self.store.ranking(photo_id)
        index = next((i for i, entry in enumerate(ranking["results"]) if entry["aspect_ratio"] == ratio), None)
        if index is None:
            ratios = ", ".join(entry["aspect_ratio"] for entry in ranking["results"])
            raise RequestError(404, f"photo {photo_id} was not ranked at ratio {ratio!r} (it was at {ratios})")
        ranked = ranking["results"][index]["ranked"]
        if not 1 <= rank <= len(ranked):
            raise RequestError(404, f"rank {rank}: ratio {ratio} has crops 1 to {len(ranked)}")
        image, header = self._open(photo_id)
        image_format, extension = save_format(header.format, "")
        path = self.store.path(photo_id) / f"crop-{index}-{rank}{extension}"
        if not path.is_file():
            write_verified(Path(path), encode_crop(image, tuple(ranked[rank - 1]["box"]), image_format))
        stem = Path(ranking["name"]).stem or "photo"
        return path, f"{stem}_{ratio_slug(ratio)}_crop{rank}{extension}"

    def crops_zip(self, photo_id: str) -> tuple[bytes, str]:
        """Every ratio's top-k crops (those the answer listed) as one zip file."""
        ranking = self.store.ranking(photo_id)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
            for entry in ranking["results"]:
                for crop in entry["crops"]:
                    path, name = self.crop_file(photo_id, entry["aspect_ratio"], crop["rank"])
                    archive.write(path, name)
        return buffer.getvalue(), f"{Path(ranking['name']).stem or 'photo'}_crops.zip"

    def preview_file(self, photo_id: str) -> Path:
        path = self.store.path(photo_id) / "preview.jpg"
        if not path.is_file():
            image = to_rgb8(self._open(photo_id)[0])
            image.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE), Image.Resampling.LANCZOS)
            write_atomic(path, lambda tmp: image.save(tmp, format="JPEG", quality=90))
        return path

    def heat_map_file(self, photo_id: str) -> Path:
        path = self.store.heat_map_file(photo_id)
        if path is None:
            raise RequestError(404, f"photo {photo_id} has no heat map (only human-centric models predict one)")
        return path


# ----------------------------------------------------------------------------------------------
# The application
# ----------------------------------------------------------------------------------------------


def create_app(
    worker: CropWorker, store: PhotoStore, limits: ServerLimits, personal: PersonalService | None = None
) -> FastAPI:
    """The page and its API over a running :class:`CropWorker` and a :class:`PhotoStore`; with
    ``personal``, also the personalization API (:mod:`untils.personal_routes`)."""
    service = CropService(worker, store, limits, personal)
    app = FastAPI(title="Human-centric image cropping", docs_url=None, redoc_url=None, openapi_url=None)
    too_large = (
        f"the upload is larger than this server's limit of {limits.max_upload_mb:g} MB (--max-upload-mb raises it)"
    )
    app.add_middleware(BodyLimit, limit=limits.max_upload_bytes + FORM_OVERHEAD, message=too_large)

    @app.exception_handler(RequestError)
    async def request_error(_: Request, error: RequestError) -> JSONResponse:
        return error_response(error.status, error.message)

    @app.exception_handler(UnknownPhotoError)
    async def unknown_photo(_: Request, error: UnknownPhotoError) -> JSONResponse:
        return error_response(404, str(error))

    @app.exception_handler(UploadTooLarge)
    async def upload_too_large(_: Request, error: UploadTooLarge) -> JSONResponse:
        return error_response(413, str(error))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        message = {404: "no such page or API route", 405: "this route does not take that HTTP method"}
        return error_response(error.status_code, message.get(error.status_code, str(error.detail)))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "path")
        return error_response(400, f"{where}: {first.get('msg', 'invalid value')}".lower())

    @app.exception_handler(Exception)
    async def unexpected(_: Request, error: Exception) -> JSONResponse:  # logged by uvicorn; the server goes on
        return error_response(500, f"the server failed on this request ({type(error).__name__}: {error})")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/api/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": worker.cropper.describe(),
            "detector": getattr(worker.detector, "name", None) if worker.detector is not None else None,
            "ratios": list(PAGE_RATIOS),
            "max_top_k": MAX_TOP_K,
            "max_upload_mb": limits.max_upload_mb,
            "max_pixels": limits.max_pixels,
            "personalization": personal.describe() if personal is not None else {"available": False},
        }

    @app.post("/api/crop")
    async def crop(request: Request) -> JSONResponse:
        try:
            form = await request.form(max_files=1, max_fields=16)
        except UploadTooLarge:
            raise
        except Exception:  # not multipart, broken boundaries, too many parts: all one answer
            raise RequestError(400, "send a multipart form with the image in a field named photo") from None
        try:
            photo, photo_id = form.get("photo"), form.get("photo_id")
            options = parse_options(form, worker)
            if isinstance(photo_id, str) and photo_id and photo is None:
                return JSONResponse(await service.rerank(photo_id, options))
            if not isinstance(photo, UploadFile):
                raise RequestError(
                    400,
                    "no photo: send the image file in the multipart field named photo (or a stored photo's photo_id)",
                )
            content = await photo.read(limits.max_upload_bytes + 1)
        finally:
            await form.close()
        if len(content) > limits.max_upload_bytes:
            raise RequestError(413, too_large)
        return JSONResponse(await service.crop(content, photo.filename, options))

    @app.get("/api/photos/{photo_id}/crops/{ratio}/{rank}")
    async def crop_image(photo_id: str, ratio: str, rank: int) -> FileResponse:
        path, name = await run_in_threadpool(service.crop_file, photo_id, ratio, rank)
        return FileResponse(path, filename=name, content_disposition_type="inline")

    @app.get("/api/photos/{photo_id}/crops.zip")
    async def crops_zip(photo_id: str) -> Response:
        content, name = await run_in_threadpool(service.crops_zip, photo_id)
        return Response(
            content, media_type="application/zip", headers={"Content-Disposition": f'attachment; filename="{name}"'}
        )

    @app.get("/api/photos/{photo_id}/preview.jpg")
    async def preview(photo_id: str) -> FileResponse:
        return FileResponse(await run_in_threadpool(service.preview_file, photo_id), media_type="image/jpeg")

    @app.get("/api/photos/{photo_id}/heat_map.png")
    async def heat_map(photo_id: str) -> FileResponse:
        return FileResponse(service.heat_map_file(photo_id), media_type="image/png")

    if personal is not None:
        add_personal_routes(app, personal)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
