from pipeline.contrastive.losses.dense_infonce import DenseInfoNCELoss
from pipeline.contrastive.losses.infonce_queue import InfoNCEQueueLoss
from pipeline.contrastive.losses.mean_shifted import MeanShiftedContrastLoss, feature_center
from pipeline.contrastive.losses.ntxent import NTXentLoss
from pipeline.contrastive.losses.perturbation_contrast import PerturbationContrastLoss

__all__ = ["NTXentLoss", "InfoNCEQueueLoss", "DenseInfoNCELoss", "PerturbationContrastLoss", "MeanShiftedContrastLoss",
           "feature_center"]
