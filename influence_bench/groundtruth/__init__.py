"""Ground truth: presets, the artifact cache, the reference model, LDS and leave-one-out retrainings.

The names below are imported on first use (PEP 562), so that the torch-free parts (``presets``,
``cache``) load without torch, and the command line answers ``--help`` and bad names at once.
"""

from importlib import import_module

_WHERE = {
    "ArtifactStore": "cache", "default_cache_dir": "cache",
    "LDSGroundTruth": "lds", "build_lds_groundtruth": "lds", "draw_masks": "lds", "groundtruth_dir": "lds",
    "LOOGroundTruth": "loo", "build_loo_groundtruth": "loo", "draw_loo_points": "loo", "loo_dir": "loo",
    "PRESETS": "presets", "Preset": "presets", "UnknownPresetError": "presets", "get_preset": "presets",
    "reference_model": "reference", "reference_checkpoints": "reference", "Checkpoints": "reference",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)


def __dir__() -> list[str]:
    return __all__
