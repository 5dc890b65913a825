"""Video files in, gazed ViT features out: the encode pipeline and its feature files."""
from .decode import ClipReader, probe
from .encoder import EncodeResult, Encoder, encode_video
from .features import FeatureWriter, TileClip, VideoFeatures, is_complete, load_features, read_metadata

__all__ = ["ClipReader", "EncodeResult", "Encoder", "FeatureWriter", "TileClip", "VideoFeatures", "encode_video",
           "is_complete", "load_features", "probe", "read_metadata"]
