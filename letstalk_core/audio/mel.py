"""A log-mel filterbank "encoder" with no weights, for the demo model and tests.

``[F, 1, n_mels]``: log mel energies (torchaudio ``MelSpectrogram``, 25 ms Hann window, 10 ms hop,
centred frames with silence beyond the ends), linearly interpolated at video-frame centres, scaled as
``(log10(max(mel, 1e-8)) + 4) / 4``: silence is -1 and speech at full scale about 2, so the audio
projection starts from inputs of unit size (natural logs with a 1e-10 floor spanned -23..6, and silence
against speech dominated the first layer).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchaudio

from .encoder_base import AudioEncoder
from .frames import centre_positions, chunk_ranges, lerp_rows


MEL_FLOOR = 1e-8  # mel power below this counts as silence: (log10(1e-8) + 4) / 4 = -1


class MelAudioEncoder(AudioEncoder):
    kind = "mel"

    def __init__(self, n_mels: int = 80, *, n_fft: int = 400, hop_length: int = 160, chunk_seconds: float = 60.0):
        super().__init__(f"log-mel filterbank ({n_mels} bands)")
        if n_mels < 1 or n_fft < 2 or hop_length < 1:
            raise ValueError(f"mel encoder needs n_mels >= 1, n_fft >= 2, hop_length >= 1; got {n_mels}, {n_fft}, {hop_length}")
        self.n_mels, self.n_fft, self.hop_length = int(n_mels), int(n_fft), int(hop_length)
        self.chunk_seconds = float(chunk_seconds)
        self.melspec = torchaudio.transforms.MelSpectrogram(
            sample_rate=self.sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, center=False, power=2.0
        )

    @property
    def num_layers(self) -> int:
        return 1

    @property
    def feature_dim(self) -> int:
        return self.n_mels

    def _encode(self, samples: torch.Tensor, pad_samples: int, fps, num_frames: int) -> torch.Tensor:
        half = self.n_fft // 2
        waveform = F.pad(samples, (half, half + pad_samples))  # [T + n_fft]: centred frames, silence at the ends
        num_mel = (waveform.shape[0] - self.n_fft) // self.hop_length + 1
        rate = self.sample_rate / self.hop_length
        features = torch.empty(num_frames, 1, self.n_mels)  # [F, 1, n_mels]
        for start, stop in chunk_ranges(num_frames, max(1, round(self.chunk_seconds * float(fps)))):
            positions = centre_positions(rate, fps, start, stop, num_mel)  # [stop - start]
            first, last = int(positions[0].floor()), min(int(positions[-1].ceil()), num_mel - 1)
            piece = waveform[first * self.hop_length : last * self.hop_length + self.n_fft]
            mel = (self.melspec(piece).clamp_min(MEL_FLOOR).log10() + 4.0).div(4.0).T  # [last - first + 1, n_mels]
            features[start:stop, 0] = lerp_rows(mel, positions, first)
        return features
