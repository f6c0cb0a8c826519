"""Ground truth: presets, the artifact cache, the reference model and LDS retrainings."""

from influence_bench.groundtruth.cache import ArtifactStore, default_cache_dir
from influence_bench.groundtruth.lds import LDSGroundTruth, build_lds_groundtruth, draw_masks, groundtruth_dir
from influence_bench.groundtruth.presets import PRESETS, Preset, UnknownPresetError, get_preset
from influence_bench.groundtruth.reference import reference_model

__all__ = [
    "PRESETS", "ArtifactStore", "LDSGroundTruth", "Preset", "UnknownPresetError", "build_lds_groundtruth",
    "default_cache_dir", "draw_masks", "get_preset", "groundtruth_dir", "reference_model",
]
