"""The review app: FastAPI, server-rendered pages over the results store.

    from inference.review import create_app
    app = create_app("sqlite:///runs/demo/results/results.db")      # uvicorn.run(app, host="127.0.0.1")

Pages (login required; otherwise a redirect to /login):
    /queue                 flagged records, newest first or by score; filters station, model_version,
                           status (unreviewed|defect|false_alarm), since/until; counts; seek pagination
    /items/{id}            image and heatmap side by side, outline at the threshold, verdict form,
                           previous/next, history; keyboard: D, F, arrows, U / Ctrl+Z
    /dashboard             flagged rate per station over time, false-alarm share per model version
    /admin/users           (admins) users and roles
JSON and files (401 without login):
    GET  /api/queue, /api/items/{id}; POST /api/items/{id}/verdict, /api/items/{id}/undo, /api/undo
    GET  /export/verdicts.csv, /export/verdicts.json (the audit trail), /export/feedback.json (the
         feedback manifest of `pipeline.data.feedback` for retraining)
    GET  /images/{relative path}    files under the store's image root only (anything else: 404)
    GET  /items/{id}/heatmap.png, /items/{id}/outline.png   colour heatmap and threshold outline
Every POST needs the session's CSRF token (form field `csrf_token` or header `X-CSRF-Token`).
"""
from __future__ import annotations

import os
import secrets
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np
from fastapi import Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware

from inference.review import charts, dashboard
from inference.review import queue as q
from inference.review import verdicts as vd
from inference.review.models import STATUSES, Verdict
from inference.review.security import (CurrentUser, LoginRequired, admin_page_user, api_user, check_csrf_form,
                                       check_csrf_header, csrf_token, login_session, login_url, page_user, safe_next,
                                       session_user)
from inference.review.users import add_user, authenticate, list_users
from inference.store import ImagePathError, ResultsStore

PACKAGE = Path(__file__).resolve().parent
SESSION_COOKIE = "loupe_review"
SESSION_MAX_AGE = 12 * 3600
#: Environment variable with the session signing key (default: a random key per process,
#: so sessions end when the server restarts).
SECRET_ENV = "LOUPE_REVIEW_SECRET"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_API_PREFIXES = ("/api/", "/export/", "/images/")
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    # everything from this origin; no inline scripts or styles
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "frame-ancestors 'none'; form-action 'self'",
}
VERDICT_LABELS = {"defect": "defect", "false_alarm": "false alarm", "unreviewed": "unreviewed"}


class VerdictIn(BaseModel):
    """JSON body of POST /api/items/{id}/verdict."""

    verdict: str = Field(pattern="^(defect|false_alarm)$")
    defect_class: Optional[str] = Field(default=None, max_length=vd.MAX_CLASS_CHARS)
    comment: Optional[str] = Field(default=None, max_length=vd.MAX_COMMENT_CHARS)


def _is_api(request: Request) -> bool:
    path = request.url.path
    return path.startswith(_API_PREFIXES) or path.endswith(".png")


def _verdict_json(v: Verdict) -> dict[str, Any]:
    return {"id": v.id, "record_id": v.record_id, "verdict": v.verdict, "defect_class": v.defect_class, "comment": v.comment,
            "reviewer": v.reviewer, "created_at": v.created_at.isoformat(),
            "undone_at": v.undone_at.isoformat() if v.undone_at else None}


def create_app(db_url: str | None = None, image_root: Path | None = None, secret_key: str | None = None, *,
               store: ResultsStore | None = None, https_only: bool = False) -> FastAPI:
    """The review app over the results store at `db_url` (default: the store's default URL).

    `image_root` defaults as in `ResultsStore`. `secret_key` signs the session cookie
    (default: $LOUPE_REVIEW_SECRET, else random per process). Pass an open `store`
    instead of `db_url`/`image_root` to share one. `https_only` marks the cookie Secure
    (set it when serving behind TLS).
    """
    store = store or ResultsStore(db_url, image_root)
    app = FastAPI(title="Loupe review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store
    app.add_middleware(SessionMiddleware, secret_key=secret_key or os.environ.get(SECRET_ENV) or secrets.token_urlsafe(32),
                       session_cookie=SESSION_COOKIE, max_age=SESSION_MAX_AGE, same_site="lax", https_only=https_only)
    app.mount("/static", StaticFiles(directory=PACKAGE / "static"), name="static")
    templates = Jinja2Templates(directory=str(PACKAGE / "templates"))
    templates.env.filters["dt"] = lambda t: t.strftime("%Y-%m-%d %H:%M:%S") if t is not None else ""
    templates.env.globals["VERDICT_LABELS"] = VERDICT_LABELS

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        for key, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        if not request.url.path.startswith(("/images/", "/static/")) and not request.url.path.endswith(".png"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, exc: LoginRequired) -> Response:
        return RedirectResponse(login_url(exc.next_url), status_code=303)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if _is_api(request) or request.method != "GET" and request.headers.get("content-type", "").startswith("application/json"):
            return await http_exception_handler(request, exc)
        user = session_user(request)
        return render(request, "error.html", user, status_code=exc.status_code, message=exc.detail, code=exc.status_code)

    def render(request: Request, name: str, user: CurrentUser | None, status_code: int = 200, **ctx: Any) -> HTMLResponse:
        flashes = request.session.pop("flash", []) if user is not None else []
        return templates.TemplateResponse(request, name, {"user": user, "csrf": csrf_token(request), "flashes": flashes, **ctx},
                                          status_code=status_code)

    def flash(request: Request, text: str, kind: str = "info") -> None:
        request.session["flash"] = [*request.session.get("flash", []), [kind, text]][-3:]

    def parse_filter(station: str | None, model_version: str | None, status: str | None, since: str | None,
                     until: str | None, sort: str | None) -> q.QueueFilter:
        try:
            return q.QueueFilter.parse(station, model_version, status, since, until, sort)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None

    def filter_dep(station: Optional[str] = None, model_version: Optional[str] = None, status: Optional[str] = None,
                   since: Optional[str] = None, until: Optional[str] = None, sort: Optional[str] = None) -> q.QueueFilter:
        return parse_filter(station, model_version, status, since, until, sort)

    def load_page(f: q.QueueFilter, after: str | None, before: str | None, limit: int) -> tuple[q.QueuePage, dict[str, int], dict[str, list[str]]]:
        try:
            with store.session() as s:
                return q.queue_page(s, f, after, before, limit), q.queue_counts(s, f), q.filter_choices(s)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None

    # ------------------------------------------------------------------ login

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str = "/queue") -> Response:
        if session_user(request) is not None:
            return RedirectResponse(safe_next(next), status_code=303)
        return render(request, "login.html", None, next=safe_next(next), error=None)

    @app.post("/login", response_class=HTMLResponse)
    async def login(request: Request, username: str = Form(""), password: str = Form(""), next: str = Form("/queue")) -> Response:
        await check_csrf_form(request)
        with store.session() as s:
            user = authenticate(s, username.strip(), password)
            if user is not None:
                login_session(request, user)
        if user is None:
            return render(request, "login.html", None, status_code=401, next=safe_next(next), error="Wrong username or password.")
        return RedirectResponse(safe_next(next), status_code=303)

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        await check_csrf_form(request)
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    # ------------------------------------------------------------------ pages

    @app.get("/")
    def index(user: CurrentUser = Depends(page_user)) -> Response:
        return RedirectResponse("/queue", status_code=303)

    @app.get("/queue", response_class=HTMLResponse)
    def queue_page(request: Request, user: CurrentUser = Depends(page_user), f: q.QueueFilter = Depends(filter_dep),
                   after: Optional[str] = None, before: Optional[str] = None,
                   limit: int = Query(q.DEFAULT_LIMIT, ge=1, le=q.MAX_LIMIT)) -> Response:
        page, counts, choices = load_page(f, after, before, limit)
        status_urls = {s: "/queue" + replace(f, status=s).query() for s in STATUSES}
        return render(request, "queue.html", user, page=page, f=f, counts=counts, choices=choices, statuses=STATUSES,
                      limit=limit, item_query=f.query(), status_urls=status_urls, all_url="/queue" + replace(f, status=None).query())

    @app.get("/items/{record_id}", response_class=HTMLResponse)
    def item_page(record_id: str, request: Request, user: CurrentUser = Depends(page_user),
                  f: q.QueueFilter = Depends(filter_dep)) -> Response:
        with store.session() as s:
            row = q.get_row(s, record_id)
            if row is None:
                raise HTTPException(404, f"no flagged record {record_id}")
            prev_id, next_id = q.neighbours(s, row, f)
            hist = vd.history(s, record_id)
        qs = f.query()
        here = f"/items/{record_id}{qs}"
        after_verdict = f"/items/{next_id}{qs}" if next_id else f"/queue{qs}"
        return render(request, "item.html", user, row=row, f=f, qs=qs, here=here, history=hist,
                      prev_url=f"/items/{prev_id}{qs}" if prev_id else None,
                      next_url=f"/items/{next_id}{qs}" if next_id else None,
                      after_verdict=after_verdict, ratio=row.score / row.threshold if row.threshold else None)

    @app.post("/items/{record_id}/verdict")
    async def give_verdict(record_id: str, request: Request, user: CurrentUser = Depends(page_user),
                           verdict: str = Form(""), defect_class: str = Form(""), comment: str = Form(""),
                           next: str = Form("")) -> Response:
        await check_csrf_form(request)
        try:
            with store.session() as s:
                vd.add_verdict(s, record_id, verdict, user.username, defect_class or None, comment or None)
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from None
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        flash(request, f"{record_id[:8]}: {VERDICT_LABELS[verdict]} (press U to undo)")
        return RedirectResponse(safe_next(next, f"/items/{record_id}"), status_code=303)

    @app.post("/items/{record_id}/undo")
    async def undo_item(record_id: str, request: Request, user: CurrentUser = Depends(page_user),
                        next: str = Form("")) -> Response:
        await check_csrf_form(request)
        v = _undo(user, record_id)
        flash(request, f"{record_id[:8]}: {VERDICT_LABELS[v.verdict]} by {v.reviewer} undone")
        return RedirectResponse(safe_next(next, f"/items/{record_id}"), status_code=303)

    @app.post("/undo")
    async def undo_last(request: Request, user: CurrentUser = Depends(page_user), qs: str = Form("")) -> Response:
        """Undo the user's own latest verdict and go back to that item (U / Ctrl+Z on the item page)."""
        await check_csrf_form(request)
        v = _undo(user, None)
        flash(request, f"{v.record_id[:8]}: {VERDICT_LABELS[v.verdict]} undone")
        query = qs if qs.startswith("?") else ""
        return RedirectResponse(safe_next(f"/items/{v.record_id}{query}"), status_code=303)

    def _undo(user: CurrentUser, record_id: str | None) -> Verdict:
        try:
            with store.session() as s:
                return vd.undo(s, user.username, user.is_admin, record_id)
        except vd.NothingToUndo as exc:
            raise HTTPException(409, str(exc)) from None
        except vd.UndoForbidden as exc:
            raise HTTPException(403, str(exc)) from None

    @app.get("/dashboard", response_class=HTMLResponse)
    def dashboard_page(request: Request, user: CurrentUser = Depends(page_user)) -> Response:
        with store.session() as s:
            series, stations, bucket = dashboard.flagged_rate(s)
            models = dashboard.model_stats(s)
        rate_svg = charts.line_chart(series, y_label=f"flagged per frame (per {bucket})",
                                     time_format="%m-%d %H:%M" if bucket == "hour" else "%Y-%m-%d")
        bars = [(m.model_version, m.false_alarm_share, f"{m.false_alarms} of {m.reviewed}") for m in models
                if m.false_alarm_share is not None]
        return render(request, "dashboard.html", user, rate_svg=Markup(rate_svg), share_svg=Markup(charts.bar_chart(bars)),
                      stations=stations, models=models, bucket=bucket)

    @app.get("/admin/users", response_class=HTMLResponse)
    def users_page(request: Request, user: CurrentUser = Depends(admin_page_user)) -> Response:
        with store.session() as s:
            users = list_users(s)
        return render(request, "users.html", user, users=users, error=None)

    @app.post("/admin/users")
    async def users_add(request: Request, user: CurrentUser = Depends(admin_page_user), username: str = Form(""),
                        password: str = Form(""), role: str = Form("reviewer")) -> Response:
        await check_csrf_form(request)
        try:
            with store.session() as s:
                add_user(s, username.strip(), password, role)
        except ValueError as exc:
            with store.session() as s:
                users = list_users(s)
            return render(request, "users.html", user, status_code=400, users=users, error=str(exc))
        flash(request, f"user {username.strip()} ({role}) added")
        return RedirectResponse("/admin/users", status_code=303)

    # ------------------------------------------------------------------ images

    def _file(relative: str) -> Path:
        try:
            path = store.image_path(relative)
        except (ImagePathError, ValueError, OSError):
            raise HTTPException(404, "no such image") from None
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            raise HTTPException(404, "no such image")
        return path

    @app.get("/images/{relative:path}")
    def image(relative: str, user: CurrentUser = Depends(api_user)) -> Response:
        # content-addressed files never change: let the browser keep them
        return FileResponse(_file(relative), headers={"Cache-Control": "private, max-age=86400, immutable"})

    def _map_and_threshold(record_id: str) -> tuple[np.ndarray, int]:
        with store.session() as s:
            row = q.get_row(s, record_id)
        if row is None:
            raise HTTPException(404, f"no flagged record {record_id}")
        m = cv2.imread(str(_file(row.map_path)), cv2.IMREAD_GRAYSCALE)
        if m is None:
            raise HTTPException(404, f"the anomaly map of {record_id} is not a readable image")
        # stored maps are uint8 clip(round(256 * m)), so a normalised threshold t sits at 256 * t
        return m, int(np.clip(round(256 * row.threshold), 1, 255))

    def _png(image: np.ndarray) -> Response:
        ok, buf = cv2.imencode(".png", image)
        if not ok:
            raise HTTPException(500, "could not encode PNG")
        return Response(buf.tobytes(), media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/items/{record_id}/heatmap.png")
    def heatmap(record_id: str, user: CurrentUser = Depends(api_user)) -> Response:
        m, _ = _map_and_threshold(record_id)
        return _png(cv2.applyColorMap(m, cv2.COLORMAP_JET))

    @app.get("/items/{record_id}/outline.png")
    def outline(record_id: str, user: CurrentUser = Depends(api_user)) -> Response:
        """Transparent PNG with the contour of map >= threshold (drawn over the image at any heatmap opacity)."""
        m, thr = _map_and_threshold(record_id)
        contours, _ = cv2.findContours((m >= thr).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        rgba = np.zeros((*m.shape, 4), np.uint8)
        width = max(1, min(m.shape) // 128)
        cv2.drawContours(rgba, contours, -1, (0, 0, 0, 255), width + 2)  # dark halo: visible on light parts
        cv2.drawContours(rgba, contours, -1, (255, 255, 255, 255), width)
        return _png(rgba)

    # ------------------------------------------------------------------ JSON API

    @app.get("/api/me")
    def me(user: CurrentUser = Depends(api_user)) -> dict[str, Any]:
        return {"username": user.username, "role": user.role}

    @app.get("/api/queue")
    def api_queue(user: CurrentUser = Depends(api_user), f: q.QueueFilter = Depends(filter_dep),
                  after: Optional[str] = None, before: Optional[str] = None,
                  limit: int = Query(q.DEFAULT_LIMIT, ge=1, le=q.MAX_LIMIT)) -> dict[str, Any]:
        page, counts, _ = load_page(f, after, before, limit)
        return {"items": [r.to_json() for r in page.rows], "next_cursor": page.next_cursor, "prev_cursor": page.prev_cursor,
                "counts": counts}

    @app.get("/api/items/{record_id}")
    def api_item(record_id: str, user: CurrentUser = Depends(api_user), f: q.QueueFilter = Depends(filter_dep)) -> dict[str, Any]:
        with store.session() as s:
            row = q.get_row(s, record_id)
            if row is None:
                raise HTTPException(404, f"no flagged record {record_id}")
            prev_id, next_id = q.neighbours(s, row, f)
            hist = [_verdict_json(v) for v in vd.history(s, record_id)]
        return {**row.to_json(), "prev_id": prev_id, "next_id": next_id, "verdicts": hist}

    @app.post("/api/items/{record_id}/verdict", status_code=201)
    def api_verdict(record_id: str, body: VerdictIn, request: Request, user: CurrentUser = Depends(api_user)) -> dict[str, Any]:
        check_csrf_header(request)
        try:
            with store.session() as s:
                return _verdict_json(vd.add_verdict(s, record_id, body.verdict, user.username, body.defect_class, body.comment))
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from None
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None

    @app.post("/api/items/{record_id}/undo")
    def api_undo_item(record_id: str, request: Request, user: CurrentUser = Depends(api_user)) -> dict[str, Any]:
        check_csrf_header(request)
        return _verdict_json(_undo(user, record_id))

    @app.post("/api/undo")
    def api_undo(request: Request, user: CurrentUser = Depends(api_user)) -> dict[str, Any]:
        check_csrf_header(request)
        return _verdict_json(_undo(user, None))

    # ------------------------------------------------------------------ exports

    @app.get("/export/verdicts.csv")
    def export_csv(user: CurrentUser = Depends(api_user), include_undone: bool = True) -> Response:
        with store.session() as s:
            rows = vd.verdict_rows(s, include_undone)
        return Response(vd.rows_to_csv(rows), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": 'attachment; filename="verdicts.csv"'})

    @app.get("/export/verdicts.json")
    def export_json(user: CurrentUser = Depends(api_user), include_undone: bool = True) -> Response:
        with store.session() as s:
            rows = vd.verdict_rows(s, include_undone)
        return JSONResponse({"verdicts": rows}, headers={"Content-Disposition": 'attachment; filename="verdicts.json"'})

    @app.get("/export/feedback.json")
    def export_feedback(user: CurrentUser = Depends(api_user), product: Optional[str] = None) -> Response:
        """The feedback manifest (absolute image paths), written by `write_feedback` like the CLI's."""
        with tempfile.TemporaryDirectory(prefix="loupe-feedback-") as tmp, store.session() as s:
            path, _ = vd.write_feedback_manifest(s, store.image_root, Path(tmp) / "feedback.json", product=product)
            data = path.read_bytes()
        return Response(data, media_type="application/json",
                        headers={"Content-Disposition": 'attachment; filename="feedback.json"'})

    return app
