"""autogaze_ext: fast AutoGaze gaze models and gazed-token ViTs."""
__version__ = "0.1.0"
