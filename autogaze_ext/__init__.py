"""autogaze_ext: fast AutoGaze gaze models and gazed-token ViTs.

>>> import autogaze_ext as ag
>>> model = ag.AutoGaze.from_pretrained("path/to/checkpoint")
>>> out = model.generate(video, gazing_ratio=0.75, task_loss_requirement=0.7)
>>> vit = ag.accelerate(siglip_vision_model)  # then vit(video_for_vit, gaze=out)
"""
from .clips import split_clips
from .config import AutoGazeConfig
from .model import AutoGaze, GazeOutput, GazeState, exact_fp32
from .ops.patches import gather_patches, multiscale_patches, multiscale_pos_table
from .ops.preprocess import preprocess
from .pipeline import EncodeResult, Encoder, VideoFeatures, encode_video, load_features
from .processor import AutoGazeImageProcessor, AutoGazeProcessor
from .vit import GazedFeatures, GazedViT, accelerate

__version__ = "0.1.0"

__all__ = [
    "AutoGaze",
    "AutoGazeConfig",
    "AutoGazeImageProcessor",
    "AutoGazeProcessor",
    "EncodeResult",
    "Encoder",
    "GazeOutput",
    "GazeState",
    "GazedFeatures",
    "GazedViT",
    "VideoFeatures",
    "accelerate",
    "encode_video",
    "exact_fp32",
    "gather_patches",
    "load_features",
    "multiscale_patches",
    "multiscale_pos_table",
    "preprocess",
    "split_clips",
]
