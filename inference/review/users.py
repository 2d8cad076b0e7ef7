"""Review-app users: bcrypt password hashes, creation, lookup, login check.

Used by the app (login) and by `loupe users add|list|set-password`. Functions take an
open SQLAlchemy `Session` (from `ResultsStore.session()`) and never commit on their
own: writes are flushed, and `ResultsStore.session()` commits when its block ends.
"""
from __future__ import annotations

import functools
import re

import bcrypt
from sqlalchemy import select
from sqlalchemy.orm import Session

from inference.review.models import ROLES, User

#: bcrypt looks at the first 72 bytes only; longer passwords are refused rather than silently cut.
MAX_PASSWORD_BYTES = 72
MIN_PASSWORD_CHARS = 8
_USERNAME = re.compile(r"^[A-Za-z0-9_.@-]{1,100}$")


@functools.cache
def _dummy_hash() -> str:
    """A valid hash, checked when the user does not exist, so that a failed login takes
    the same time whether or not the username is known."""
    return bcrypt.hashpw(b"loupe-no-such-user", bcrypt.gensalt(rounds=12)).decode("ascii")


def _check_password(password: str) -> bytes:
    raw = password.encode("utf-8")
    if len(password) < MIN_PASSWORD_CHARS:
        raise ValueError(f"password too short: use at least {MIN_PASSWORD_CHARS} characters")
    if len(raw) > MAX_PASSWORD_BYTES:
        raise ValueError(f"password too long: bcrypt uses at most {MAX_PASSWORD_BYTES} bytes (UTF-8); use a shorter one")
    return raw


def hash_password(password: str, rounds: int = 12) -> str:
    """bcrypt hash (salted, cost `rounds`) of a password that passes the length rules."""
    return bcrypt.hashpw(_check_password(password), bcrypt.gensalt(rounds=rounds)).decode("ascii")


def verify_password(password: str, password_hash: str) -> bool:
    """True when `password` matches the bcrypt `password_hash`."""
    raw = password.encode("utf-8")
    if len(raw) > MAX_PASSWORD_BYTES:
        return False
    try:
        return bcrypt.checkpw(raw, password_hash.encode("ascii"))
    except ValueError:  # a malformed hash in the table
        return False


def validate_username(username: str) -> str:
    """The username, or ValueError when it has characters other than letters, digits and _ . @ -."""
    if not _USERNAME.match(username):
        raise ValueError(f"invalid username {username!r}: use 1-100 letters, digits or _ . @ -")
    return username


def validate_role(role: str) -> str:
    """The role, or ValueError naming the allowed roles."""
    if role not in ROLES:
        raise ValueError(f"invalid role {role!r}: use one of {', '.join(ROLES)}")
    return role


def get_user(session: Session, username: str) -> User | None:
    """The user called `username`, or None."""
    return session.scalars(select(User).where(User.username == username)).first()


def list_users(session: Session) -> list[User]:
    """All users, by username."""
    return list(session.scalars(select(User).order_by(User.username)))


def add_user(session: Session, username: str, password: str, role: str = "reviewer") -> User:
    """Create (and flush) a user; ValueError when the name is taken or the input is invalid."""
    validate_username(username)
    validate_role(role)
    if get_user(session, username) is not None:
        raise ValueError(f"user {username!r} already exists; pick another name (or `loupe users set-password {username}`)")
    user = User(username=username, password_hash=hash_password(password), role=role)
    session.add(user)
    session.flush()
    return user


def set_password(session: Session, username: str, password: str) -> User:
    """Replace a user's password (flushed); ValueError when the user does not exist."""
    user = get_user(session, username)
    if user is None:
        raise ValueError(f"no user {username!r}; create it with `loupe users add {username}`")
    user.password_hash = hash_password(password)
    session.flush()
    return user


def authenticate(session: Session, username: str, password: str) -> User | None:
    """The user when the password is right, else None (same work either way)."""
    user = get_user(session, username)
    if user is None:
        verify_password(password, _dummy_hash())
        return None
    return user if verify_password(password, user.password_hash) else None
