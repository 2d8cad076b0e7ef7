"""The review part of `make demo`: a demo login over the demo's results store."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from inference.review.serve import DEFAULT_HOST, DEFAULT_PORT

DEMO_USERNAME = "demo"
DEMO_PASSWORD = "loupe-demo"


def prepare_demo_review(db_url: str | None, image_root: Path | None = None, username: str = DEMO_USERNAME,
                        password: str = DEMO_PASSWORD, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> dict[str, Any]:
    """Create the demo login (an admin) if missing, or reset its password if it differs; say how to start the app.

    Returns {"url", "username", "password", "created", "flagged", "command", "text"}: `text`
    is what the demo prints; `command` starts the app (the caller may also call
    `inference.review.serve.serve(db_url, image_root, host, port)` directly).
    """
    from sqlalchemy import func, select

    from inference.review.users import add_user, get_user, set_password, verify_password
    from inference.store import Record, ResultsStore

    store = ResultsStore(db_url, image_root)
    try:
        with store.session() as s:
            user = get_user(s, username)
            created = user is None
            if created:
                add_user(s, username, password, role="admin")
            elif not verify_password(password, user.password_hash):
                set_password(s, username, password)
            flagged = s.scalar(select(func.count()).select_from(Record)) or 0
        url = f"http://{host}:{port}/"
        command = f"loupe review --db {store.url} --image-root {store.image_root} --host {host} --port {port}"
        text = (f"review app: {url} (log in as {username} / {password}; {flagged} flagged items in the queue)\n"
                f"  start it with: {command}")
        return {"url": url, "username": username, "password": password, "created": created, "flagged": flagged,
                "command": command, "text": text}
    finally:
        store.close()
