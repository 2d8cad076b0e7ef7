"""Review app for flagged defects (issue 7): a queue with heatmaps, verdicts that feed retraining, access control.

    loupe users add alice --role admin            # bcrypt-hashed password, asked twice
    loupe review [--db URL] [--image-root DIR] [--host 127.0.0.1] [--port 8000]
    loupe review export --feedback feedback.json  # the manifest the training flow reads

Modules: `models` (tables `users`, `verdicts` on the results store's `Base`; migration
0002), `users` (passwords, accounts), `security` (sessions, login, CSRF), `queue`
(filters, seek pagination), `verdicts` (verdicts, undo, exports, feedback manifest),
`dashboard` and `charts` (numbers and SVG charts), `app` (`create_app`, the FastAPI
routes and templates), `serve` (uvicorn), `demo` (`prepare_demo_review`).
"""
from __future__ import annotations

from typing import Any

__all__ = ["create_app", "prepare_demo_review", "serve"]


def __getattr__(name: str) -> Any:  # lazy: importing the package does not import FastAPI
    if name == "create_app":
        from inference.review.app import create_app

        return create_app
    if name == "serve":
        from inference.review.serve import serve

        return serve
    if name == "prepare_demo_review":
        from inference.review.demo import prepare_demo_review

        return prepare_demo_review
    raise AttributeError(f"module 'inference.review' has no attribute {name!r}")
