"""Reading inspection data: image folders, MVTec AD roots and JSON/CSV manifests."""

from pipeline.data.errors import DataError
from pipeline.data.fingerprint import fingerprint
from pipeline.data.io import IMAGE_EXTENSIONS, read_image, read_mask, write_image_atomic
from pipeline.data.sample import Sample
from pipeline.data.sources import Split, check_readable, load_samples

__all__ = [
    "DataError",
    "IMAGE_EXTENSIONS",
    "Sample",
    "Split",
    "check_readable",
    "fingerprint",
    "load_samples",
    "read_image",
    "read_mask",
    "write_image_atomic",
]
