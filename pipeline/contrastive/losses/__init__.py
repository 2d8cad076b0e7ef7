from pipeline.contrastive.losses.dense_infonce import DenseInfoNCELoss
from pipeline.contrastive.losses.infonce_queue import InfoNCEQueueLoss
from pipeline.contrastive.losses.ntxent import NTXentLoss

__all__ = ["NTXentLoss", "InfoNCEQueueLoss", "DenseInfoNCELoss"]
