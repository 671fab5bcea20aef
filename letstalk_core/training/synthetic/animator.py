"""Drive the synthetic face from speech: mouth from the audio, blinks and head motion from a seed.

Per video frame ``i`` (``fps`` frames per second, ``ceil(seconds * fps)`` frames) the audio
window centred on the frame's middle, ``(i + 0.5) / fps``, gives:

* the mouth opening: the window's RMS, normalised by the clip's loud speech level,
  gated so that silence closes the mouth, lightly smoothed over neighbouring frames;
* the mouth shape: the window's spectral centroid on a log scale; dark vowels
  (low centroid, "oo") round the mouth, bright sounds (high centroid, "ee", "s") widen it.

The opening is a pure function of the audio (:func:`mouth_opening_from_audio`); evaluation
uses it as the ground truth for lip sync. Blinks and head motion come from a seed only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ...sound import mix_and_resample, read_sound
from ...video.timing import as_fps, frame_count
from .face import FacePose

__all__ = [
    "FaceMotion",
    "audio_frame_features",
    "mouth_opening_from_audio",
    "mouth_width_from_audio",
    "animate_face",
    "SILENCE_RMS",
]

SILENCE_RMS = 10 ** (-50 / 20)  # windows quieter than -50 dBFS count as silence
_RELATIVE_GATE = 0.08  # and so do windows below 8% of the clip's loud speech level
_WINDOW_FRAMES = 1.5  # analysis window, in video frame periods


def _check_audio(audio, sample_rate):
    """Return ``(mono float64 samples [S], sample_rate)`` from anything the package's one audio
    normaliser accepts (an array with its rate, an audio/video file, a ComfyUI AUDIO dict)."""
    sound = read_sound(audio, sample_rate)
    mono, rate = mix_and_resample(sound.samples, sound.sample_rate)  # [1, S] at its own rate
    return mono[0].double().numpy(), rate


def _frame_windows(audio: np.ndarray, sample_rate: int, fps, num_frames: Optional[int]) -> np.ndarray:
    """Samples of each frame's analysis window, Hann-weighted: ``[F, W]``."""
    fps = as_fps(fps)
    if num_frames is None:
        num_frames = frame_count(audio.shape[0], sample_rate, fps)
    if not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive int (or None for ceil(seconds * fps)), got {num_frames!r}")
    hop = sample_rate / float(fps)
    width = max(16, int(round(hop * _WINDOW_FRAMES)))
    centres = np.round((np.arange(num_frames) + 0.5) * hop).astype(np.int64)  # [F]
    starts = centres - width // 2
    padded = np.pad(audio, (width, width + int(math.ceil(hop)) * 2))
    index = starts[:, None] + width + np.arange(width)[None, :]  # [F, W]
    index = np.clip(index, 0, padded.shape[0] - 1)
    return padded[index] * np.hanning(width)[None, :]  # [F, W]


def audio_frame_features(audio, sample_rate: Optional[int] = None, fps=25, num_frames: Optional[int] = None):
    """Per-frame ``(rms [F], spectral_centroid_hz [F])`` of the audio window around each frame.

    The RMS is corrected for the Hann window, so a steady sine of amplitude A gives A / sqrt(2).
    """
    samples, sample_rate = _check_audio(audio, sample_rate)
    windows = _frame_windows(samples, sample_rate, fps, num_frames)  # [F, W]
    hann = np.hanning(windows.shape[1])
    rms = np.sqrt((windows**2).sum(1) / (hann**2).sum())  # [F]
    spectrum = np.abs(np.fft.rfft(windows, axis=1))  # [F, W//2+1]
    freqs = np.fft.rfftfreq(windows.shape[1], d=1.0 / sample_rate)
    power = spectrum**2
    centroid = (power * freqs[None, :]).sum(1) / np.maximum(power.sum(1), 1e-20)  # [F]
    return rms, centroid


def _smooth(values: np.ndarray) -> np.ndarray:
    """Symmetric [1, 2, 1] / 4 smoothing over frames, ends repeated."""
    if values.shape[0] < 3:
        return values.copy()
    padded = np.pad(values, 1, mode="edge")
    return 0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:]


def _opening_from_rms(rms: np.ndarray) -> np.ndarray:
    voiced = rms > SILENCE_RMS
    if not voiced.any():
        return np.zeros_like(rms)
    loud = float(np.percentile(rms[voiced], 95))  # the clip's loud speech level
    level = np.clip(rms / loud, 0.0, 1.0)
    opening = np.clip((level - _RELATIVE_GATE) / (1.0 - _RELATIVE_GATE), 0.0, 1.0) ** 0.8
    opening[~voiced] = 0.0
    return np.clip(_smooth(opening), 0.0, 1.0)


def mouth_opening_from_audio(
    audio, sample_rate: Optional[int] = None, fps=25, num_frames: Optional[int] = None
) -> np.ndarray:
    """Ground-truth mouth opening per video frame, float ``[F]`` in 0..1 (0 = closed).

    ``audio`` is a float array ``[S]`` (or ``[C, S]``, mixed down) with ``sample_rate``, or the
    path of an audio or video file (then ``sample_rate`` is None). The level is normalised
    per recording, so pass the whole recording, not a piece of it.
    ``F = ceil(seconds * fps)`` unless ``num_frames`` is given. Deterministic: depends on the
    audio only. Silence (below -50 dBFS or below 8% of the clip's loud level) gives 0.
    """
    rms, _ = audio_frame_features(audio, sample_rate, fps, num_frames)
    return _opening_from_rms(rms)


def _width_from_features(rms: np.ndarray, centroid: np.ndarray, opening: np.ndarray) -> np.ndarray:
    brightness = np.clip((np.log(np.maximum(centroid, 1.0)) - math.log(400.0)) / math.log(3500.0 / 400.0), 0.0, 1.0)
    # neutral (0.5) when the mouth is nearly closed, the spectral shape when it is open
    weight = np.clip(opening * 3.0, 0.0, 1.0)
    width = 0.5 + (brightness - 0.5) * weight
    return np.clip(_smooth(width), 0.0, 1.0)


def mouth_width_from_audio(
    audio, sample_rate: Optional[int] = None, fps=25, num_frames: Optional[int] = None
) -> np.ndarray:
    """Mouth shape per frame, float ``[F]``: 0 rounded ("oo") .. 0.5 neutral .. 1 wide ("ee")."""
    rms, centroid = audio_frame_features(audio, sample_rate, fps, num_frames)
    return _width_from_features(rms, centroid, _opening_from_rms(rms))


@dataclass(frozen=True)
class FaceMotion:
    """Per-frame animation curves, each float ``[F]``."""

    fps: float
    mouth_open: np.ndarray
    mouth_width: np.ndarray
    blink: np.ndarray
    head_dx: np.ndarray
    head_dy: np.ndarray
    head_roll: np.ndarray
    brow_raise: np.ndarray

    def __len__(self) -> int:
        return int(self.mouth_open.shape[0])

    def pose(self, index: int) -> FacePose:
        if not -len(self) <= index < len(self):
            raise IndexError(f"frame index {index} is outside 0..{len(self) - 1}")
        return FacePose(
            mouth_open=float(self.mouth_open[index]),
            mouth_width=float(self.mouth_width[index]),
            blink=float(self.blink[index]),
            head_dx=float(self.head_dx[index]),
            head_dy=float(self.head_dy[index]),
            head_roll=float(self.head_roll[index]),
            brow_raise=float(self.brow_raise[index]),
        )


def _blink_curve(num_frames: int, fps: float, rng: np.random.Generator) -> np.ndarray:
    """Blinks every 1.8-5 s (sometimes a double blink): fast close, one closed frame, slower open."""
    blink = np.zeros(num_frames)
    closing = max(1, int(round(0.07 * fps)))
    opening = max(2, int(round(0.14 * fps)))
    shape = np.concatenate(
        [np.arange(1, closing + 1) / (closing + 1), [1.0], 1.0 - np.arange(1, opening + 1) / (opening + 1)]
    )  # rises to exactly 1 on one frame
    time = rng.uniform(0.3, 2.0)
    while True:
        starts = [time]
        if rng.uniform() < 0.15:
            starts.append(time + 0.4)
        for start_s in starts:
            start = int(round(start_s * fps))
            if start >= num_frames:
                break
            stop = min(num_frames, start + shape.shape[0])
            blink[start:stop] = np.maximum(blink[start:stop], shape[: stop - start])
        time += rng.uniform(1.8, 5.0)
        if time * fps >= num_frames:
            return blink


def _smooth_noise(num_frames: int, fps: float, rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """Sum of three slow sinusoids (0.08-0.6 Hz) with random phases, peak about ``amplitude``."""
    t = np.arange(num_frames) / fps
    curve = np.zeros(num_frames)
    for weight in (1.0, 0.5, 0.25):
        frequency = rng.uniform(0.08, 0.6)
        curve += weight * np.sin(2 * math.pi * frequency * t + rng.uniform(0, 2 * math.pi))
    return curve * amplitude / 1.75


def animate_face(
    audio, sample_rate: Optional[int] = None, fps=25, seed: int = 0, num_frames: Optional[int] = None
) -> FaceMotion:
    """Animation curves for a talking face: mouth from ``audio``, blinks and head motion from ``seed``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    rms, centroid = audio_frame_features(audio, sample_rate, fps, num_frames)
    frames = rms.shape[0]
    rate = float(as_fps(fps))
    rng = np.random.default_rng([int(seed), 0xA11E])
    mouth_open = _opening_from_rms(rms)
    mouth_width = _width_from_features(rms, centroid, mouth_open)
    # speech lifts the brows a little and nods the head with the emphasis
    emphasis = np.convolve(mouth_open, np.ones(5) / 5, mode="same")
    head_dx = np.clip(_smooth_noise(frames, rate, rng, 0.012), -0.05, 0.05)
    head_dy = np.clip(_smooth_noise(frames, rate, rng, 0.007) + 0.004 * emphasis, -0.05, 0.05)
    head_roll = np.clip(_smooth_noise(frames, rate, rng, 0.035), -0.15, 0.15)
    brow_raise = np.clip(0.35 * emphasis + 0.2 * np.clip(_smooth_noise(frames, rate, rng, 1.0), 0.0, 1.0), 0.0, 1.0)
    blink = _blink_curve(frames, rate, rng)
    return FaceMotion(
        fps=rate,
        mouth_open=mouth_open,
        mouth_width=mouth_width,
        blink=blink,
        head_dx=head_dx,
        head_dy=head_dy,
        head_roll=head_roll,
        brow_raise=brow_raise,
    )
