"""Run the review app with uvicorn (`loupe review`)."""
from __future__ import annotations

from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def serve(db_url: str | None = None, image_root: Path | None = None, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          secret_key: str | None = None, log_level: str = "info") -> None:
    """Serve the review app until interrupted. Binds to 127.0.0.1 unless another host is given."""
    import uvicorn

    from inference.review.app import create_app

    app = create_app(db_url, image_root, secret_key)
    # proxy_headers off: behind no proxy, a client must not choose its own address
    uvicorn.run(app, host=host, port=port, log_level=log_level, proxy_headers=False, server_header=False)
