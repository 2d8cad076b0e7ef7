"""Authentication and CSRF for the review app.

- The session is a signed cookie (Starlette `SessionMiddleware`, itsdangerous): it holds
  the user id, a fingerprint of the user's password hash (changing the password ends
  every session of that user) and the per-session CSRF token. Login replaces the whole
  session (no fixation).
- Pages without a logged-in user redirect to `/login?next=...`; API, export and image
  routes answer 401.
- Every form post carries the session's CSRF token in the `csrf_token` field, JSON posts
  in the `X-CSRF-Token` header; a missing or wrong token is refused with 403.
"""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from urllib.parse import quote

from fastapi import HTTPException, Request

from inference.review.models import User

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"


class LoginRequired(Exception):
    """A page was requested without a logged-in user (answered with a redirect to /login)."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


@dataclass(frozen=True)
class CurrentUser:
    """The logged-in user of a request."""

    id: int
    username: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def password_fingerprint(password_hash: str) -> str:
    """Short digest of a password hash, kept in the session to notice password changes."""
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


def login_session(request: Request, user: User) -> None:
    """Start a fresh session for `user` (new CSRF token; nothing of the old session survives)."""
    request.session.clear()
    request.session.update({"uid": user.id, "pw": password_fingerprint(user.password_hash),
                            "csrf": secrets.token_urlsafe(32)})


def session_user(request: Request) -> CurrentUser | None:
    """The user of the session cookie, checked against the database (None when absent or stale)."""
    cached = getattr(request.state, "user", False)
    if cached is not False:
        return cached
    user: CurrentUser | None = None
    uid = request.session.get("uid")
    if uid is not None:
        with request.app.state.store.session() as s:
            row = s.get(User, uid)
            if row is not None and password_fingerprint(row.password_hash) == request.session.get("pw"):
                user = CurrentUser(row.id, row.username, row.role)
        if user is None:
            request.session.clear()
    request.state.user = user
    return user


def _here(request: Request) -> str:
    return request.url.path + (f"?{request.url.query}" if request.url.query else "")


def page_user(request: Request) -> CurrentUser:
    """Dependency of pages: the user, or a redirect to the login page."""
    user = session_user(request)
    if user is None:
        raise LoginRequired(_here(request))
    return user


def api_user(request: Request) -> CurrentUser:
    """Dependency of API, export and image routes: the user, or 401."""
    user = session_user(request)
    if user is None:
        raise HTTPException(401, "authentication required: log in at /login", headers={"WWW-Authenticate": 'Cookie realm="loupe-review"'})
    return user


def admin_page_user(request: Request) -> CurrentUser:
    """Dependency of admin pages: an admin, a redirect to login, or 403."""
    user = page_user(request)
    if not user.is_admin:
        raise HTTPException(403, "this page is for admins")
    return user


def csrf_token(request: Request) -> str:
    """The session's CSRF token (created on first use, also for the anonymous login form)."""
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return token


def _check(request: Request, sent: object) -> None:
    expected = request.session.get("csrf")
    if not expected or not isinstance(sent, str) or not secrets.compare_digest(sent.encode(), str(expected).encode()):
        raise HTTPException(403, "CSRF token missing or wrong; reload the page and try again")


async def check_csrf_form(request: Request) -> None:
    """Refuse (403) a form post whose `csrf_token` field is not the session's token."""
    form = await request.form()  # Starlette caches the parsed form for the route's Form() parameters
    _check(request, form.get(CSRF_FIELD))


def check_csrf_header(request: Request) -> None:
    """Refuse (403) a JSON post whose X-CSRF-Token header is not the session's token."""
    _check(request, request.headers.get(CSRF_HEADER))


def safe_next(url: str | None, default: str = "/queue") -> str:
    """A redirect target inside this app: a path starting with one '/', else `default` (no open redirects)."""
    if not url or not url.startswith("/") or url.startswith("//") or "\\" in url or any(ord(c) < 32 for c in url):
        return default
    return url


def login_url(next_url: str) -> str:
    return "/login?next=" + quote(safe_next(next_url), safe="")
