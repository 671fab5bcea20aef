"""Video input/output: streaming mp4 writing with audio muxing, frame and stream reading."""

from .reader import VideoInfo, decode_audio, iter_video_frames, probe, read_video_frames
from .timing import as_fps, frame_count
from .writer import SUPPORTED_EXTENSIONS, Mp4Writer

__all__ = [
    "Mp4Writer",
    "SUPPORTED_EXTENSIONS",
    "VideoInfo",
    "probe",
    "read_video_frames",
    "iter_video_frames",
    "decode_audio",
    "as_fps",
    "frame_count",
]
