"""The web page's personalization API: ratings of the offered crops, a user's fine-tuning job and
the user's ranking beside the generic one (README.md, "The web page").

  POST   /api/ratings                           {"user", "photo_id", "box", "score"} -> the user's summary
  GET    /api/users/{user}/ratings              -> {"user", "crops", "photos", "ratings", "has_model"}
  DELETE /api/users/{user}/ratings/{photo_id}?box=x1,y1,x2,y2
  POST   /api/personalize                       {"user"} -> 202 {"job": id}
  GET    /api/jobs/{id}                         -> {"state", "progress", "message", ...}

Its one rule: a rating names a crop the server offered for that photo (the personal model's
candidates, listed by ``POST /api/crop`` with a ``user``), so every rating can train the model.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image
from starlette.concurrency import run_in_threadpool

from untils.boxes import box_from_text
from untils.jobs import JobConflict, JobRunner, UnknownJob
from untils.photo_store import PhotoStore, UnknownPhotoError
from untils.photos import open_upright
from untils.pic_checks import box_key
from untils.ratings_store import RatedPhoto, RatingError, RatingsStore, checked_box, checked_user
from untils.user_models import Box, Ranked, UserModels

MAX_JSON_BYTES = 4096


def crops_json(ranked: Ranked, top_k: int, ratings: dict[tuple, int] | None = None) -> list[dict[str, Any]]:
    crops = []
    for rank, (box, score) in enumerate(ranked[:top_k], start=1):
        crop: dict[str, Any] = {"rank": rank, "box": list(box), "score": score}
        if ratings is not None:
            crop["rating"] = ratings.get(box_key(box))
        crops.append(crop)
    return crops


class PersonalService:
    """Ratings, users' rankings and fine-tuning jobs over the photo store's uploads."""

    def __init__(
        self, ratings: RatingsStore, models: UserModels, jobs: JobRunner, photos: PhotoStore, max_pixels: int
    ) -> None:
        self.ratings, self.models, self.jobs, self.photos = ratings, models, jobs, photos
        self.max_pixels = max_pixels

    def describe(self) -> dict[str, Any]:
        return {"available": True, **self.models.describe()}

    def summary(self, user: str) -> dict[str, Any]:
        """The user's ratings and counts (``photos_ready``: photos with enough rated crops to learn from)."""
        return self.ratings.summary(user, self.models.personalization.min_rated_crops)

    def ranking_json(
        self, user: str, photo_id: str, image: Image.Image, human_box: Box | None, top_k: int
    ) -> dict[str, Any]:
        """``POST /api/crop``'s ``personal`` entry (run off the event loop): the user's top-k of the
        candidates (the prior's when the user has no model yet) with their ratings, the prior's top-k
        beside them, and every candidate in the user's order (``ranked``: the crops one may rate)."""
        ranking = self.models.rank(user, image, human_box)
        rated = {box_key(r.box): r.score for r in self.ratings.ratings(user) if r.photo_id == photo_id}
        summary = self.summary(user)
        return {
            "user": summary["user"],
            "kind": ranking.kind,
            "model": str(self.ratings.model_file(user))
            if ranking.kind == "personal"
            else self.models.describe()["prior"],
            "crops": crops_json(ranking.ranked, top_k, rated),
            "generic": crops_json(ranking.prior, top_k),
            "ranked": crops_json(ranking.ranked, len(ranking.ranked), rated),
            "rated": {key: summary[key] for key in ("crops", "photos", "photos_ready")},
        }

    def _offer(self, photo_id: str) -> None:
        """Keep the uploaded photo, its person box and the crops offered for rating in the ratings store."""
        try:
            ranking = self.photos.ranking(photo_id)
            image, header = open_upright(self.photos.photo_file(photo_id), self.max_pixels)
        except (UnknownPhotoError, ValueError):
            return  # no longer in the photo store: the ratings store's copy is all there is
        offered = ranking.get("personal", {}).get("ranked", [])
        if not offered:  # ranked without a user: no crops were offered for rating
            return
        person = ranking.get("person", {}).get("box")
        self.ratings.add_photo(
            photo_id,
            RatedPhoto(image, header.format, None if person is None else tuple(person), [c["box"] for c in offered]),
        )

    def rate(self, body: dict[str, Any]) -> dict[str, Any]:
        user, photo_id = checked_user(body.get("user")), body.get("photo_id")
        if not isinstance(photo_id, str):
            raise RatingError(f"photo_id {photo_id!r}: expected the photo's id from POST /api/crop")
        box = checked_box(body.get("box"))
        try:
            rating = self.ratings.rate(user, photo_id, box, body.get("score"))
        except RatingError as error:
            if error.status not in (404, 422):
                raise
            self._offer(photo_id)  # first rating of this photo, or newly offered crops of it
            rating = self.ratings.rate(user, photo_id, box, body.get("score"))
        summary = self.summary(user)
        return {"rating": rating.to_json(), **{key: value for key, value in summary.items() if key != "ratings"}}

    def delete(self, user: str, photo_id: str, box_text: str) -> dict[str, Any]:
        self.ratings.delete(user, photo_id, checked_box(box_from_text(box_text)))
        return self.summary(user)

    def personalize(self, body: dict[str, Any]) -> str:
        user = checked_user(body.get("user"))
        ready, needed = self.summary(user)["photos_ready"], self.models.personalization.min_rated_photos
        if ready < needed:
            crops = self.models.personalization.min_rated_crops
            raise RatingError(
                f"user {user} has rated at least {crops} crops of {ready} photos; "
                f"personalizing needs {needed} such photos",
                422,
            )

        def prepare() -> dict[str, Any]:
            names = {self.ratings.image_name(r.photo_id) for r in self.ratings.ratings(user)}
            boxes = self.ratings.human_boxes()
            training = self.ratings.training_file(user, self.models.personalization.min_rated_crops)
            return {
                "prior_path": self.models.personalization.prior_path,
                "user": user,
                "ratings_csv": str(training),
                "photo_dir": str(self.ratings.photo_dir),
                "out_path": str(self.ratings.model_file(user)),
                "human_boxes": {name: boxes.get(name) for name in names if name is not None},
            }

        return self.jobs.submit(user, prepare).id


async def json_body(request: Request) -> dict[str, Any]:
    content = await request.body()
    if len(content) > MAX_JSON_BYTES:
        raise RatingError(f"the request body is over {MAX_JSON_BYTES} bytes; send one small JSON object", 413)
    try:
        body = json.loads(content)
    except (UnicodeDecodeError, json.JSONDecodeError):
        body = None
    if not isinstance(body, dict):
        raise RatingError("send one JSON object (Content-Type: application/json)")
    return body


def add_personal_routes(app: FastAPI, service: PersonalService) -> None:
    """The routes of the module's docstring, over ``service``; its errors as 4xx sentences."""

    @app.exception_handler(RatingError)
    async def rating_error(_: Request, error: RatingError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=error.status)

    @app.exception_handler(JobConflict)
    async def job_conflict(_: Request, error: JobConflict) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=409)

    @app.exception_handler(UnknownJob)
    async def unknown_job(_: Request, error: UnknownJob) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=404)

    @app.post("/api/ratings")
    async def rate(request: Request) -> dict[str, Any]:
        return await run_in_threadpool(service.rate, await json_body(request))

    @app.get("/api/users/{user}/ratings")
    async def user_ratings(user: str) -> dict[str, Any]:
        return await run_in_threadpool(service.summary, user)

    @app.delete("/api/users/{user}/ratings/{photo_id}")
    async def delete_rating(user: str, photo_id: str, box: str) -> dict[str, Any]:
        return await run_in_threadpool(service.delete, user, photo_id, box)

    @app.post("/api/personalize")
    async def personalize(request: Request) -> JSONResponse:
        job_id = await run_in_threadpool(service.personalize, await json_body(request))
        return JSONResponse({"job": job_id}, status_code=202)

    @app.get("/api/jobs/{job_id}")
    async def job(job_id: str) -> dict[str, Any]:
        return service.jobs.get(job_id).to_json()
