"""AutoGaze gaze model: reference PyTorch implementation."""
from .autogaze import AutoGaze, AutoGazeModel, GazeState
from .precision import exact_fp32
from .output import GazeOutput

__all__ = ["AutoGaze", "AutoGazeModel", "GazeOutput", "GazeState", "exact_fp32"]
