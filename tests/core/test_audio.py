"""Audio conditioning: loading, frame counts, windows, wav2vec2/whisper/mel encoders, chunking, errors."""

from __future__ import annotations

import math
import subprocess
from fractions import Fraction

import imageio_ffmpeg
import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import (
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperModel,
)

from letstalk_core.audio import (
    AudioFeatures,
    MelAudioEncoder,
    Wav2Vec2AudioEncoder,
    encode_audio,
    frame_count,
    frame_windows,
    load_audio,
    load_audio_encoder,
)

SR = 16_000


def speech_like(seconds: float, sample_rate: int = SR, seed: int = 0) -> np.ndarray:
    """Syllable-rate bursts of a gliding harmonic tone plus breath noise, [T] float32."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    rng = np.random.default_rng(seed)
    envelope = np.abs(np.sin(2 * np.pi * 3.1 * t)) * (0.5 + 0.5 * np.sin(2 * np.pi * 0.13 * t))
    pitch = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    voice = np.sin(2 * np.pi * np.cumsum(pitch) / sample_rate) + 0.4 * np.sin(4 * np.pi * np.cumsum(pitch) / sample_rate)
    return (envelope * (0.3 * voice + 0.05 * rng.standard_normal(t.shape))).astype(np.float32)


def tiny_wav2vec2_config(stable: bool = False) -> Wav2Vec2Config:
    # Released CNN kernels/strides, tiny widths; width 64 -> 1 head, as load-time inference assumes (width / 64).
    return Wav2Vec2Config(
        hidden_size=64, num_hidden_layers=3, num_attention_heads=1, intermediate_size=96, conv_dim=(24,) * 7,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, conv_bias=stable,
        feat_extract_norm="layer" if stable else "group", do_stable_layer_norm=stable,
    )


@pytest.fixture(scope="module")
def wav2vec2_files(tmp_path_factory):
    """A base-like (group norm, post-LN) and a large-like (layer norm, pre-LN) tiny model, each saved as
    an HF folder, an HF single file (``wav2vec2.`` prefix, old weight_g/weight_v names) and a ComfyUI-style
    single file (no prefix, parametrizations names, fp16)."""
    root = tmp_path_factory.mktemp("wav2vec2")
    files = {}
    for stable in (False, True):
        torch.manual_seed(3 + stable)
        model = Wav2Vec2Model(tiny_wav2vec2_config(stable)).eval()
        name = "large" if stable else "base"
        folder = root / f"{name}_hf"
        model.save_pretrained(folder)
        Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(folder)
        state = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
        hf_single = {}
        for key, value in state.items():
            key = key.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1", "weight_v")
            hf_single["wav2vec2." + key] = value
        hf_single["lm_head.weight"] = torch.zeros(5, 64)  # a CTC head, ignored by the encoder
        save_file(hf_single, str(root / f"{name}_hf_ctc.safetensors"))
        save_file({k: v.half() for k, v in state.items()}, str(root / f"{name}_comfy.safetensors"))
        files[name] = {"model": model, "folder": folder, "hf_file": root / f"{name}_hf_ctc.safetensors",
                       "comfy_file": root / f"{name}_comfy.safetensors"}
    return files


@pytest.fixture(scope="module")
def whisper_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("whisper")
    torch.manual_seed(5)
    config = WhisperConfig(
        d_model=64, encoder_layers=2, encoder_attention_heads=1, encoder_ffn_dim=96, decoder_layers=1,
        decoder_attention_heads=1, decoder_ffn_dim=96, num_mel_bins=80, max_source_positions=250,  # 5 s windows
        max_target_positions=16, vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=1, suppress_tokens=None, begin_suppress_tokens=None,
    )
    model = WhisperModel(config).eval()
    model.save_pretrained(root / "hf")
    save_file({"model." + k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "whisper.safetensors"))
    return {"model": model, "folder": root / "hf", "file": root / "whisper.safetensors"}


def hallo_reference(model: Wav2Vec2Model, samples: np.ndarray, fps: float, clip: int | None = None) -> torch.Tensor:
    """Hallo/LetsTalk audio features computed with the Hugging Face modules themselves."""
    normalized = Wav2Vec2FeatureExtractor(do_normalize=True)(samples, sampling_rate=SR).input_values[0]
    seq_len = math.ceil(len(normalized) / SR * fps)
    if clip and seq_len % clip:
        pad_frames = clip - seq_len % clip
        normalized = np.pad(normalized, (0, pad_frames * (SR // int(fps))))
        seq_len += pad_frames
    values = torch.tensor(normalized)[None]  # [1, T]
    cnn = model.feature_extractor

    class InterpolatedCNN(torch.nn.Module):  # Hallo's Wav2VecModel: interpolate the CNN features to seq_len
        def forward(self, x):
            return F.interpolate(cnn(x), size=seq_len, align_corners=True, mode="linear")

    model.feature_extractor = InterpolatedCNN()
    try:
        with torch.no_grad():
            out = model(values, output_hidden_states=True)
    finally:
        model.feature_extractor = cnn
    layers = list(out.hidden_states[1:])
    if model.config.do_stable_layer_norm:  # transformers 4.x put the final LayerNorm on the last hidden state
        layers[-1] = out.last_hidden_state
    return torch.stack(layers, dim=2)[0]  # [F, L, D]


# --- frame arithmetic ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "num_samples, fps, expected",
    [(64_000, 25, 100), (64_001, 25, 101), (63_999, 25, 100), (1, 25, 1), (1_600_000, 29.97, 2998),  # 29.97 is NTSC 30000/1001: 100 s span 2997.003 frames
        
     (160_000, 29.97, 300), (1001 * SR, Fraction(30000, 1001), 30000), (1001 * SR, 30000 / 1001, 30000),
     (16_000, "30000/1001", 30), (48_000, 24, 72), (1_600_000, np.float32(29.97), 2998), (16_000, 23.976, 24)],
)
def test_frame_count_is_exact(num_samples, fps, expected):
    assert frame_count(num_samples, SR, fps) == expected


def test_frame_windows_clamp_at_both_ends():
    features = torch.arange(6, dtype=torch.float32)[:, None, None].expand(6, 2, 3)  # [F, L, D], value = frame
    windows = frame_windows(features, radius=2)
    assert windows.shape == (6, 5, 2, 3)
    expected = [[0, 0, 0, 1, 2], [0, 0, 1, 2, 3], [0, 1, 2, 3, 4], [1, 2, 3, 4, 5], [2, 3, 4, 5, 5], [3, 4, 5, 5, 5]]
    assert windows[:, :, 1, 2].tolist() == expected
    assert frame_windows(features[:1], radius=2)[0, :, 0, 0].tolist() == [0, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="radius"):
        frame_windows(features, radius=-1)


# --- loading ---------------------------------------------------------------------------------------


def test_stereo_48k_comfy_dict_is_downmixed_and_resampled():
    t = torch.arange(48_000 * 2) / 48_000
    left, right = 0.6 * torch.sin(2 * math.pi * 440 * t), 0.2 * torch.sin(2 * math.pi * 440 * t)
    audio = load_audio({"waveform": torch.stack([left, right])[None], "sample_rate": 48_000})  # [1, 2, T]
    assert audio.sample_rate == SR and audio.num_samples == 32_000
    t16 = torch.arange(32_000) / SR
    expected = 0.4 * torch.sin(2 * math.pi * 440 * t16)
    interior = slice(800, -800)  # the resampler's filter edges
    assert (audio.samples[interior] - expected[interior]).abs().max() < 2e-3
    # numpy [T, C] layout with a rate gives the same mono signal
    again = load_audio(torch.stack([left, right], dim=1).numpy(), 48_000)
    torch.testing.assert_close(again.samples, audio.samples)


def test_loudness_normalisation_reaches_target_and_keeps_silence():
    quiet = 0.01 * np.sin(2 * np.pi * 300 * np.arange(3 * SR) / SR).astype(np.float32)
    audio = load_audio(quiet, SR, loudness_lufs=-23.0)
    import torchaudio.functional as AF

    assert abs(float(AF.loudness(audio.samples[None], SR)) + 23.0) < 0.3
    silent = load_audio(np.zeros(SR, np.float32), SR, loudness_lufs=-23.0)
    assert torch.count_nonzero(silent.samples) == 0


@pytest.mark.parametrize("suffix", ["wav", "flac", "mp3", "m4a", "mp4"])
def test_files_of_several_formats(tmp_path, suffix):
    t = np.arange(int(1.5 * 44_100)) / 44_100
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    stereo = np.stack([tone, 0.5 * tone], axis=1)  # [T, C]
    wav = tmp_path / "speech_src.wav"
    soundfile.write(wav, stereo, 44_100)
    path = tmp_path / f"speech.{suffix}"
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    if suffix == "wav":
        path = wav
    elif suffix == "flac":
        soundfile.write(path, stereo, 44_100)
    elif suffix == "mp4":  # a video with an audio track
        subprocess.run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", "testsrc=size=64x64:rate=25:duration=1.5", "-i", str(wav),
                        "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(path)], check=True)
    else:
        codec = {"mp3": "libmp3lame", "m4a": "aac"}[suffix]
        subprocess.run([ffmpeg, "-v", "error", "-i", str(wav), "-c:a", codec, str(path)], check=True)
    audio = load_audio(path)
    assert audio.sample_rate == SR
    assert abs(audio.seconds - 1.5) < 0.08, audio.seconds  # lossy codecs add a few ms of priming
    middle = audio.samples[4000:-4000].numpy()
    spectrum = np.abs(np.fft.rfft(middle * np.hanning(len(middle))))
    assert abs(np.argmax(spectrum) * SR / len(middle) - 440) < 3
    assert abs(np.sqrt(np.mean(middle ** 2)) - 0.375 / np.sqrt(2)) < 0.03  # mean of the channels, RMS of a sine


# --- wav2vec2 --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["base", "large"])
@pytest.mark.parametrize("form", ["folder", "hf_file", "comfy_file"])
def test_wav2vec2_loads_from_files_and_matches_reference(wav2vec2_files, kind, form):
    entry = wav2vec2_files[kind]
    encoder = load_audio_encoder(entry["folder"] if form == "folder" else entry[form])
    assert isinstance(encoder, Wav2Vec2AudioEncoder)
    assert (encoder.num_layers, encoder.feature_dim) == (3, 64)
    samples = speech_like(3.01, seed=1)
    reference = hallo_reference(entry["model"], samples, 25)  # [F, L, D]
    result = encode_audio((samples, SR), encoder, fps=25)
    assert result.features.shape == (76, 3, 64) == reference.shape
    # fp16 ComfyUI copies carry fp16 rounding of the weights.
    tolerance = 3e-2 if form == "comfy_file" else 1e-4
    torch.testing.assert_close(result.features, reference, atol=tolerance, rtol=tolerance)
    assert result.num_frames == 76 and result.fps == 25


def test_wav2vec2_padding_to_clips_matches_hallo(wav2vec2_files):
    entry = wav2vec2_files["base"]
    encoder = load_audio_encoder(entry["hf_file"])
    samples = speech_like(2.3, seed=2)  # 58 frames -> 64 with clips of 16
    result = encode_audio((samples, SR), encoder, fps=25, frames_per_clip=16)
    assert (result.num_frames, result.padded_frames) == (58, 64)
    torch.testing.assert_close(result.features, hallo_reference(entry["model"], samples, 25, clip=16), atol=1e-4, rtol=1e-4)
    assert result.windows().shape == (64, 5, 3, 64)


@pytest.mark.parametrize("seconds, fps", [(0.05, 25), (1.0, 25), (4.0, 25), (2.5, 29.97), (3.3, 30000 / 1001), (1.7, 60)])
def test_wav2vec2_frame_counts(wav2vec2_files, seconds, fps):
    encoder = load_audio_encoder(wav2vec2_files["base"]["folder"])
    samples = speech_like(seconds, seed=3)
    result = encode_audio((samples, SR), encoder, fps=fps)
    expected = math.ceil(Fraction(len(samples), SR) * Fraction(str(fps)).limit_denominator(100_000))
    assert result.features.shape == (expected, 3, 64)
    assert result.num_frames == expected and torch.isfinite(result.features).all()


def test_wav2vec2_chunked_70s_matches_single_pass(wav2vec2_files):
    model = wav2vec2_files["base"]["model"]
    audio = load_audio(speech_like(70.0, seed=4), SR)
    single = Wav2Vec2AudioEncoder(model, chunk_seconds=1000.0).encode(audio, 25)  # [1750, L, D]
    chunked_encoder = Wav2Vec2AudioEncoder(model, chunk_seconds=30.0, context_seconds=5.0)
    chunked = chunked_encoder.encode(audio, 25)
    assert single.shape == chunked.shape == (1750, 3, 64)
    # Everything before the transformer is chunk-invariant: global normalisation, global GroupNorm stats.
    waveform = audio.samples.double()
    waveform = ((waveform - waveform.mean()) / torch.sqrt(waveform.var(unbiased=False) + 1e-7)).float()
    stats = chunked_encoder._conv0_statistics(waveform)
    with torch.no_grad():
        whole = model.feature_extractor(waveform[None])[0].T  # [N, C]
        piece = chunked_encoder._cnn_features(waveform, 1000, 1500, stats)  # CNN frames 1000..1500, in pieces
    torch.testing.assert_close(piece, whole[1000:1501], atol=2e-5, rtol=1e-4)
    # The transformer sees 30 s + 5 s context instead of 70 s: stated tolerance 1% relative L2, 0.05 absolute.
    relative = float((chunked - single).norm() / single.norm())
    assert relative < 1e-2, relative
    assert float((chunked - single).abs().max()) < 5e-2
    assert relative > 0  # the chunks really were encoded separately


def test_silence_is_valid(wav2vec2_files):
    encoder = load_audio_encoder(wav2vec2_files["base"]["folder"])
    result = encode_audio(np.zeros(SR, np.float32), encoder, fps=25, sample_rate=SR)
    assert result.features.shape == (25, 3, 64) and torch.isfinite(result.features).all()


# --- whisper and mel ------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["folder", "file"])
def test_whisper_windows_match_direct_encoder(whisper_files, form):
    encoder = load_audio_encoder(whisper_files["folder" if form == "folder" else "file"])
    assert (encoder.num_layers, encoder.feature_dim) == (3, 64)  # embedding + 2 layers
    samples = speech_like(12.0, seed=6)  # three 5 s windows, the last one part silence
    result = encode_audio((samples, SR), encoder, fps=25)
    assert result.features.shape == (300, 3, 64)
    # Reference: each window through the HF encoder, tokens concatenated, interpolated at frame centres.
    extractor, model = WhisperFeatureExtractor(feature_size=80, chunk_length=5), whisper_files["model"].encoder
    tokens = []
    for start in range(0, len(samples), 5 * SR):
        mel = extractor(samples[start : start + 5 * SR], sampling_rate=SR, return_tensors="pt").input_features
        with torch.no_grad():
            out = model(mel, output_hidden_states=True)
        tokens.append(torch.stack([*out.hidden_states[:-1], out.last_hidden_state], dim=2)[0])  # [250, 3, 64]
    tokens = torch.cat(tokens).numpy()  # [750, 3, 64]
    centres = (np.arange(300) + 0.5) / 25 * 50
    reference = np.stack([[np.interp(centres, np.arange(len(tokens)), tokens[:, l, d]) for d in range(64)]
                          for l in range(3)])  # [L, D, F]
    torch.testing.assert_close(result.features, torch.tensor(reference).permute(2, 0, 1).float(), atol=1e-4, rtol=1e-4)


def test_mel_encoder_shapes_and_chunk_invariance():
    encoder = load_audio_encoder("mel")
    assert isinstance(encoder, MelAudioEncoder) and (encoder.num_layers, encoder.feature_dim) == (1, 80)
    audio = load_audio(speech_like(7.0, seed=7), SR)
    whole = encoder.encode(audio, 29.97)
    assert whole.shape == (frame_count(audio.num_samples, SR, 29.97), 1, 80) == (210, 1, 80)
    encoder.chunk_seconds = 1.0
    torch.testing.assert_close(encoder.encode(audio, 29.97), whole)
    # padding to whole clips encodes silence after the speech and keeps the true frame count
    padded = encode_audio(audio, encoder, fps=25, frames_per_clip=16)
    assert (padded.num_frames, padded.padded_frames) == (175, 176)
    torch.testing.assert_close(padded.features[:170], encoder.encode(audio, 25)[:170])
    assert torch.allclose(padded.features[-1], torch.full((1, 80), -1.0))
    # a louder band shows up where the tone is: 440 Hz sits in a low mel band
    tone = load_audio(0.5 * np.sin(2 * np.pi * 440 * np.arange(SR) / SR).astype(np.float32), SR)
    bands = encoder.encode(tone, 25)[5:20, 0].mean(0)
    assert int(bands.argmax()) < 25


# --- errors ---------------------------------------------------------------------------------------


def test_error_messages_name_the_input(tmp_path, wav2vec2_files):
    mel = load_audio_encoder("mel")
    with pytest.raises(ValueError, match="empty"):
        encode_audio(np.zeros(0, np.float32), mel, sample_rate=SR)
    with pytest.raises(ValueError, match="shorter than one video frame"):
        encode_audio(np.zeros(100, np.float32), mel, sample_rate=SR, fps=25)  # 6 ms < 40 ms
    with pytest.raises(ValueError, match="NaN/inf"):
        encode_audio(np.full(SR, np.nan, np.float32), mel, sample_rate=SR)
    with pytest.raises(ValueError, match="NaN/inf"):
        encode_audio({"waveform": torch.full((1, 1, SR), float("inf")), "sample_rate": SR}, mel)
    with pytest.raises(ValueError, match="sample_rate"):
        encode_audio(np.zeros(SR, np.float32), mel)
    garbage = tmp_path / "speech.xyz"
    garbage.write_bytes(b"this is not audio at all" * 100)
    with pytest.raises(ValueError, match=r"speech\.xyz.*unknown format"):
        load_audio(garbage)
    silent_video = tmp_path / "no_audio.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "testsrc=size=64x64:rate=25:duration=0.5",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", str(silent_video)], check=True)
    with pytest.raises(ValueError, match=r"no_audio\.mp4.*no audio track"):
        load_audio(silent_video)
    with pytest.raises(ValueError, match="batch of 2"):
        load_audio({"waveform": torch.zeros(2, 1, SR), "sample_rate": SR})
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        load_audio(tmp_path / "missing.wav")
    folder = tmp_path / "encoder"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "wav2vec2"}')
    with pytest.raises(FileNotFoundError, match=r"encoder.*model\.safetensors"):
        load_audio_encoder(folder)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_audio_encoder(tmp_path / "nowhere")
    encoder = load_audio_encoder(wav2vec2_files["base"]["folder"])
    with pytest.raises(ValueError, match=r"3 layers x 64 .* expects 12 layers x 768"):
        encoder.check_compatible(12, 768)
    encoder.check_compatible(3, 64)  # matching widths pass
    broken = tmp_path / "broken.safetensors"
    state = {k: v for k, v in wav2vec2_files["base"]["model"].state_dict().items() if "layers.2." not in k}
    save_file({"wav2vec2." + k: v.contiguous() for k, v in state.items() if not k.endswith("intermediate_dense.weight")},
              str(broken))
    with pytest.raises(ValueError, match="broken.safetensors"):
        load_audio_encoder(broken)


def test_audio_features_dataclass_windows():
    features = AudioFeatures(features=torch.randn(32, 2, 4), num_frames=27, fps=Fraction(25), source="test")
    assert (features.padded_frames, features.num_layers, features.feature_dim) == (32, 2, 4)
    assert features.windows(1).shape == (32, 3, 2, 4)
