"""Network presets, the diffusers adapter, and saving/loading model folders."""

from fewstep.models.io import LoadedModel, ModelInfo, load_model, save_model
from fewstep.models.networks import ARCHS, PRESETS, build_network, call_network

__all__ = ["ARCHS", "PRESETS", "LoadedModel", "ModelInfo", "build_network", "call_network", "load_model", "save_model"]
