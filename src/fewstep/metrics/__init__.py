"""The ruler: quality against the data, agreement with the teacher, and cost, each quality metric with its floor."""

from fewstep.metrics.agreement import rmse, teacher_agreement
from fewstep.metrics.cache import cache_dir
from fewstep.metrics.captions import (AttributeConfig, AttributeNet, attribute_accuracy, attribute_network,
                                      caption_floor, caption_quality)
from fewstep.metrics.clip import clip_score, clip_similarities, load_clip
from fewstep.metrics.cost import PeakMemory, Timing, count_flops, flops_per_call, peak_memory, time_per_sample
from fewstep.metrics.ruler import evaluate_samples
from fewstep.metrics.features import FeatureConfig, FeatureNet, feature_network
from fewstep.metrics.floor import IDEAL, RealSplit, image_floor, real_split, toy_floor
from fewstep.metrics.image import (class_agreement, frechet_distance, image_quality, precision_recall, real_images,
                                   reference_features)
from fewstep.metrics.inception import InceptionFeatures, inception_features, inception_fid, load_inception
from fewstep.metrics.toy import log_density, mmd2, sliced_wasserstein2, toy_quality
from fewstep.metrics.uncertainty import difference, image_uncertainty, ratio, ties, toy_uncertainty

__all__ = [
    "AttributeConfig", "AttributeNet", "FeatureConfig", "FeatureNet", "IDEAL", "InceptionFeatures", "PeakMemory",
    "RealSplit", "Timing", "attribute_accuracy", "attribute_network", "cache_dir", "caption_floor", "caption_quality",
    "class_agreement", "clip_score", "clip_similarities", "count_flops", "difference", "evaluate_samples",
    "feature_network", "flops_per_call", "frechet_distance", "image_floor", "image_quality", "image_uncertainty",
    "inception_features", "inception_fid", "load_clip", "load_inception", "log_density", "mmd2", "peak_memory",
    "precision_recall", "ratio", "real_images", "real_split", "reference_features", "rmse", "sliced_wasserstein2",
    "teacher_agreement", "ties", "time_per_sample", "toy_floor", "toy_quality", "toy_uncertainty",
]
