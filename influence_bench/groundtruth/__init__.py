"""Ground truth: presets, the artifact cache, the reference model, LDS and leave-one-out retrainings."""

from influence_bench.groundtruth.cache import ArtifactStore, default_cache_dir
from influence_bench.groundtruth.lds import LDSGroundTruth, build_lds_groundtruth, draw_masks, groundtruth_dir
from influence_bench.groundtruth.loo import LOOGroundTruth, build_loo_groundtruth, draw_loo_points, loo_dir
from influence_bench.groundtruth.presets import PRESETS, Preset, UnknownPresetError, get_preset
from influence_bench.groundtruth.reference import reference_model

__all__ = [
    "PRESETS", "ArtifactStore", "LDSGroundTruth", "LOOGroundTruth", "Preset", "UnknownPresetError",
    "build_lds_groundtruth", "build_loo_groundtruth", "default_cache_dir", "draw_loo_points", "draw_masks",
    "get_preset", "groundtruth_dir", "loo_dir", "reference_model",
]
