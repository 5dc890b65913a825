"""Gazed-token ViTs: ``accelerate(model)`` runs a stock transformers SigLIP or timm ViT on gazed tokens only."""
from .model import GazedFeatures, GazedViT, accelerate
from .tokens import PackedGaze, gazed_patches, pack_gaze, scale_position_table

__all__ = ["GazedFeatures", "GazedViT", "PackedGaze", "accelerate", "gazed_patches", "pack_gaze",
           "scale_position_table"]
