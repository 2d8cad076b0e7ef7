from models.heads.dense_projection import DenseProjectionHead
from models.heads.projection import ProjectionHead

__all__ = ["ProjectionHead", "DenseProjectionHead"]
