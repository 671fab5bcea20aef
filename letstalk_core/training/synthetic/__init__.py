"""A synthetic talking-face world for training and evaluating the small demo model.

* :mod:`.face` - procedural portraits: identities from a seed, frames from a pose;
* :mod:`.animator` - mouth opening and shape from speech, blinks and head motion from a seed;
  :func:`mouth_opening_from_audio` is the lip-sync ground truth used by evaluation;
* :mod:`.speech` - speech from espeak-ng with varied voices, speeds, pitches and sentences;
* :mod:`.dataset` - mp4 + JSON sidecar writer, train/held-out split by seed,
  :func:`generate_dataset`.

Command line: ``python -m letstalk_core.training.synthetic OUT_DIR --num-videos 8``.
"""

from .animator import FaceMotion, animate_face, audio_frame_features, mouth_opening_from_audio, mouth_width_from_audio
from .dataset import (
    HELDOUT_IDENTITY_START,
    generate_dataset,
    generate_talking_video,
    identity_split,
    sample_identity_seeds,
)
from .face import FaceIdentity, FacePose, mouth_box, mouth_box_fraction, render_face, sample_identity
from .speech import (
    HELDOUT_SENTENCES,
    TRAIN_SENTENCES,
    EspeakNotFoundError,
    SpeechStyle,
    SpeechTrack,
    make_speech_track,
    random_sentence,
    sentence_split,
    synthesize_speech,
)

__all__ = [
    "FaceIdentity",
    "FacePose",
    "sample_identity",
    "render_face",
    "mouth_box",
    "mouth_box_fraction",
    "FaceMotion",
    "animate_face",
    "audio_frame_features",
    "mouth_opening_from_audio",
    "mouth_width_from_audio",
    "EspeakNotFoundError",
    "SpeechStyle",
    "SpeechTrack",
    "TRAIN_SENTENCES",
    "HELDOUT_SENTENCES",
    "synthesize_speech",
    "make_speech_track",
    "random_sentence",
    "sentence_split",
    "HELDOUT_IDENTITY_START",
    "identity_split",
    "sample_identity_seeds",
    "generate_talking_video",
    "generate_dataset",
]
