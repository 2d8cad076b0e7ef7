"""Results store of live inspection: runs and flagged records (SQLAlchemy 2 + Alembic), images on disk, spool.

See `inference.store.store` for the API and layout, `inference.store.models` for the
tables (the contract with the review app), `inference.store.images` for the
content-addressed image files and `inference.store.spool` for outage handling.
"""
from inference.store.images import ImagePathError
from inference.store.models import Base, Record, Run
from inference.store.store import ResultsStore, default_image_root, default_url, loupe_home

__all__ = ["Base", "ImagePathError", "Record", "ResultsStore", "Run", "default_image_root", "default_url", "loupe_home"]
