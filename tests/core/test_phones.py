"""The phonetic speech encoder ("phones", "phones+mel"): phone decoding with pocketsphinx's CMU model, the
soft per-frame distribution, silence and noise, shapes, errors, and checkpoints that refuse the other kind."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import math
import wave

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from letstalk_core.audio import (
    MelAudioEncoder,
    PhoneAudioEncoder,
    encode_audio,
    frame_count,
    load_audio,
    load_audio_encoder,
)
from letstalk_core.audio.phones import LIP_PHONES, PHONE_INDEX, PHONES, SILENCE, frame_averages
from letstalk_core.checkpoints import load_checkpoint
from letstalk_core.pipeline import audio_encoder_for
from tests.helpers import make_tiny_bundle

SR = 16_000
LIP_COLUMNS = [PHONE_INDEX[p] for p in LIP_PHONES]
SIL = PHONE_INDEX[SILENCE]


# --- espeak-ng, through its library: the speech and, from the same synthesis, when each phoneme starts ----


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):  # espeak_EVENT of espeak-ng's speak_lib.h
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _EventId)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))
_EVENT_PHONEME, _SYNCHRONOUS, _PHONEME_EVENTS, _POS_CHARACTER = 7, 2, 1, 1


def espeak_with_timing(text: str, voice: str = "en-us") -> tuple[np.ndarray, int, list[tuple[str, float]]]:
    """``text`` spoken by espeak-ng: samples (int16), their rate, and ``[(phoneme, start seconds), ...]``
    from espeak-ng's own phoneme events (its mnemonics: p, b, m, 0 for the vowel of "pop", _ for pauses)."""
    name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        pytest.skip("espeak-ng's library is not installed (Debian: apt-get install espeak-ng; scripts/setup.sh "
                    "installs it)")
    rate = lib.espeak_Initialize(_SYNCHRONOUS, 0, None, _PHONEME_EVENTS)
    assert rate > 0, "espeak-ng did not initialise"
    assert lib.espeak_SetVoiceByName(voice.encode()) == 0, f"espeak-ng has no voice {voice}"
    chunks, phonemes = [], []

    def collect(samples, count, events):
        i = 0
        while events[i].type != 0:
            if events[i].type == _EVENT_PHONEME:
                phonemes.append((bytes(events[i].id.string).split(b"\0")[0].decode(), events[i].audio_position / 1000))
            i += 1
        if count > 0:
            chunks.append(np.ctypeslib.as_array(samples, shape=(count,)).copy())
        return 0

    callback = _CALLBACK(collect)
    lib.espeak_SetSynthCallback(callback)
    encoded = text.encode() + b"\0"
    assert lib.espeak_Synth(encoded, len(encoded), 0, _POS_CHARACTER, 0, 0, None, None) == 0
    lib.espeak_Synchronize()
    return np.concatenate(chunks), rate, phonemes


@pytest.fixture(scope="module")
def pop_bob_mom(tmp_path_factory):
    """ "pop, bob, mom" as a wav file, loaded with the pack's load_audio, and the start of every p/b/m and
    vowel as espeak-ng timed them. The voice is espeak-ng's US English with its Klatt synthesiser: with the
    default voice the M's are found as here but the B's only for some noise-floor seeds (decoded as G
    otherwise), while the Klatt voice's B's are found for every seed tried (0-5); P: see the xfail below."""
    samples, rate, phonemes = espeak_with_timing("pop, bob, mom", voice="en-us+klatt")
    path = tmp_path_factory.mktemp("speech") / "pop_bob_mom.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1), out.setsampwidth(2), out.setframerate(rate)
        out.writeframes(samples.astype("<i2").tobytes())
    starts = {kind: [t for p, t in phonemes if p == kind] for kind in ("p", "b", "m", "0")}
    assert [len(starts[k]) for k in ("p", "b", "m", "0")] == [2, 2, 2, 3], phonemes  # what was said
    return load_audio(path), starts


@pytest.fixture(scope="module")
def phones():
    return load_audio_encoder("phones")


def _decoded(encoder, audio) -> list[tuple[str, float, float]]:
    return [(p, first * 0.01, (last + 1) * 0.01) for p, first, last in encoder.decoder.segments(audio.samples)]


# --- where the lips close ----------------------------------------------------------------------------


def test_b_and_m_are_decoded_where_espeak_says_them(pop_bob_mom, phones):
    audio, starts = pop_bob_mom
    lips = [(p, start) for p, start, _ in _decoded(phones, audio) if p in LIP_PHONES]
    spoken = starts["b"] + starts["m"] + starts["p"]
    for said in starts["b"] + starts["m"]:
        nearest = min((abs(start - said) for _, start in lips), default=math.inf)
        assert nearest <= 0.040, f"no lip phone within 40 ms of the one said at {said:.3f} s: {lips}"
    # and no lip closure is made up: every decoded P/B/M starts within 40 ms of a spoken p, b or m
    for phone, start in lips:
        assert min(abs(start - said) for said in spoken) <= 0.040, (phone, start, spoken)


@pytest.mark.xfail(strict=True, reason="espeak-ng's /p/ (a recorded burst) is decoded as TH, T or K by the CMU "
                                       "model in all 14 espeak-ng voices tried; real speech (GRID) gets its P's. "
                                       "strict: this fails loudly the day espeak's p is heard as a lip phone")
def test_p_is_decoded_where_espeak_says_it(pop_bob_mom, phones):
    audio, starts = pop_bob_mom
    lips = [start for p, start, _ in _decoded(phones, audio) if p in LIP_PHONES]
    for said in starts["p"]:
        assert min((abs(start - said) for start in lips), default=math.inf) <= 0.040


def test_a_transcript_puts_every_lip_phone_where_it_is_said(pop_bob_mom, phones):
    """Forced alignment of the words (generate --text, the node's transcript): the P's the phone loop cannot hear
    in espeak's voice are there too, each within 40 ms of where espeak says it, and nothing else closes the lips."""
    audio, starts = pop_bob_mom
    aligned = phones.with_transcript("Pop, Bob, mom.")
    assert aligned.transcript == "Pop, Bob, mom." and phones.transcript is None  # a copy; the original unchanged
    segments = aligned.decoder.aligned_segments(audio.samples, aligned.transcript)
    lips = [(p, first * 0.01, (last + 1) * 0.01) for p, first, last in segments if p in LIP_PHONES]
    assert [p for p, _, _ in lips] == ["P", "P", "B", "B", "M", "M"], segments
    said = {"P": starts["p"], "B": starts["b"], "M": starts["m"]}
    # each closure is a span (a stop's closure comes before its burst, which is where espeak times it): every
    # spoken p/b/m falls inside (within 40 ms) an aligned span of its phone, and every span holds one
    for phone, times in said.items():
        for t in times:
            assert any(p == phone and start - 0.04 <= t <= end + 0.04 for p, start, end in lips), (phone, t, lips)
    for phone, start, end in lips:
        assert any(start - 0.04 <= t <= end + 0.04 for t in said[phone]), (phone, start, end, said[phone])
    features = aligned.encode(audio, fps=25)  # [F, 1, P]: the P columns carry weight where P is said
    p_column = features[:, 0, PHONES.index("P")]
    assert float(p_column.max()) > 0.3
    assert float(phones.encode(audio, fps=25)[:, 0, PHONES.index("P")].max()) < float(p_column.max())


def test_a_transcript_is_checked_against_the_dictionary(phones):
    from letstalk_core.audio.phones import transcript_words

    assert transcript_words("Bin blue at F 2, now!") == ["bin", "blue", "at", "f", "two", "now"]
    with pytest.raises(ValueError, match=r"transcript: 'zxqvw' is not in the CMU US-English dictionary"):
        phones.with_transcript("hello zxqvw")
    for bad in ("", "   ", "?!", None, 3):
        if bad in ("", "   ", None):
            assert phones.with_transcript(bad).transcript is None  # no words: decoded from the sound
        else:
            with pytest.raises(ValueError, match="transcript"):
                phones.with_transcript(bad)


@pytest.mark.parametrize("voice,text", [("de", "Mama, Oma, Ampel"), ("fr", "maman, pomme, mamie"),
                                        ("es", "mamá, mamá, mamá")])
def test_speech_that_is_not_english_gets_the_nearest_english_phones(phones, voice, text):
    samples, rate, phonemes = espeak_with_timing(text, voice=voice)
    audio = load_audio(samples.astype(np.float32) / 32768, rate)
    lips = [start for p, start, _ in _decoded(phones, audio) if p in LIP_PHONES]
    said_m = [t for p, t in phonemes if p == "m"]
    said_lips = [t for p, t in phonemes if p in ("m", "p", "b")]
    assert len(said_m) >= 4, phonemes
    for said in said_m:
        assert min((abs(start - said) for start in lips), default=math.inf) <= 0.040, (said, lips)
    for start in lips:
        assert min(abs(start - said) for said in said_lips) <= 0.040, (start, phonemes)


def test_video_frames_show_lips_closed_at_b_and_m_and_open_at_the_vowels(pop_bob_mom, phones):
    audio, starts = pop_bob_mom
    features = phones.encode(audio, 25)[:, 0]  # [F, P]
    lip_share = features[:, LIP_COLUMNS].sum(-1)  # [F]
    for said in starts["b"] + starts["m"]:
        near = lip_share[max(0, int((said - 0.04) * 25)): int((said + 0.04) * 25) + 1]
        assert near.max() >= 0.5, (said, lip_share)
    for vowel in starts["0"]:
        middle = int((vowel + 0.06) * 25)  # inside the vowel of each word
        assert lip_share[middle] < 0.2 and features[middle, SIL] < 0.2, (vowel, features[middle])


# --- silence, noise, music -------------------------------------------------------------------------------


def test_silence_is_all_silence(phones):
    features = phones.encode(load_audio(np.zeros(2 * SR, np.float32), SR), 25)
    assert features.shape == (50, 1, len(PHONES))
    assert torch.equal(features[:, 0, SIL], torch.ones(50))


@pytest.mark.parametrize("kind", ["white noise", "a chord"])
def test_noise_and_music_give_silence_not_lips(phones, kind):
    t = np.arange(3 * SR) / SR
    if kind == "white noise":
        signal = 0.3 * np.random.default_rng(5).standard_normal(t.shape)
    else:
        signal = sum(0.1 * np.sin(2 * np.pi * f * t) for f in (261.6, 329.6, 392.0))  # C major, held
    features = phones.encode(load_audio(signal.astype(np.float32), SR), 25)[:, 0]
    # what the decoder really does with stationary noise and a held chord: the silence phone throughout
    assert features[:, SIL].min() > 0.99, [PHONES[i] for i in features.argmax(-1)]
    assert features[:, LIP_COLUMNS].max() < 0.01


# --- shapes, padding, the distribution --------------------------------------------------------------------


@pytest.mark.parametrize("fps", [25, 29.97])
def test_shapes_and_padding_like_mel(pop_bob_mom, fps):
    audio, _ = pop_bob_mom
    true_frames = math.ceil(audio.seconds * fps - 1e-9)
    assert frame_count(audio.num_samples, audio.sample_rate, fps) == true_frames
    for name, width in (("phones", len(PHONES)), ("phones+mel", len(PHONES) + 80)):
        encoder = load_audio_encoder(name)
        assert (encoder.kind, encoder.num_layers, encoder.feature_dim) == (name, 1, width)
        features = encoder.encode(audio, fps)
        assert features.shape == (true_frames, 1, width) and features.dtype == torch.float32
        assert torch.allclose(features[:, 0, :len(PHONES)].sum(-1), torch.ones(true_frames), atol=1e-5)
        # padding to whole clips appends silence: the silence phone (and silent mel bands), as mel pads
        padded = encode_audio(audio, encoder, fps=fps, frames_per_clip=16)
        assert padded.num_frames == true_frames and padded.padded_frames == -(-true_frames // 16) * 16
        torch.testing.assert_close(padded.features[: true_frames - 2], features[: true_frames - 2])
        assert torch.equal(padded.features[-1, 0, :len(PHONES)], torch.eye(len(PHONES))[SIL])
        if name == "phones+mel":
            torch.testing.assert_close(features[..., len(PHONES):], MelAudioEncoder().encode(audio, fps))
            assert torch.allclose(padded.features[-1, 0, len(PHONES):], torch.full((80,), -1.0))


def test_frame_averages_share_time_exactly():
    steps = torch.zeros(10, 2)  # ten 10 ms steps: phone 0 for the first 3, phone 1 after
    steps[:3, 0], steps[3:, 1] = 1.0, 1.0
    frames = frame_averages(steps, 0.01, 25, 3)  # 40 ms frames: [0, 40), [40, 80), [80, 120) ms
    torch.testing.assert_close(frames, torch.tensor([[0.75, 0.25], [0.0, 1.0], [0.0, 1.0]]))
    ntsc = frame_averages(steps, 0.01, 30000 / 1001, 3)  # 33.4 ms frames: 30 ms of phone 0 in the first
    torch.testing.assert_close(ntsc[0], torch.tensor([0.03 / (1001 / 30000), 1 - 0.03 / (1001 / 30000)]))


def test_boundaries_are_smoothed_not_hard(pop_bob_mom, phones):
    audio, _ = pop_bob_mom
    steps = phones.phone_steps(audio.samples)  # [T, P] per 10 ms
    hard = PhoneAudioEncoder(boundary_ms=0).phone_steps(audio.samples)
    assert set(hard.unique().tolist()) == {0.0, 1.0}  # one-hot from the segments
    mixed = ((steps > 0.05) & (steps < 0.95)).any(-1)
    changes = (hard[1:] != hard[:-1]).any(-1)  # a boundary between steps k and k+1
    assert mixed.any() and changes.any()
    near_boundary = torch.zeros_like(mixed)
    for k in torch.nonzero(changes).flatten().tolist():
        near_boundary[max(0, k - 2): k + 4] = True
    assert not (mixed & ~near_boundary).any(), "soft rows only beside a phone boundary"
    torch.testing.assert_close(steps.sum(-1), torch.ones(steps.shape[0]))


# --- errors, as for every encoder -----------------------------------------------------------------------


def test_errors_name_the_input(phones):
    with pytest.raises(ValueError, match="empty"):
        encode_audio(np.zeros(0, np.float32), phones, sample_rate=SR)
    with pytest.raises(ValueError, match="shorter than one video frame"):
        encode_audio(np.zeros(100, np.float32), phones, sample_rate=SR, fps=25)
    with pytest.raises(ValueError, match="NaN/inf"):
        encode_audio(np.full(SR, np.nan, np.float32), phones, sample_rate=SR)
    with pytest.raises(ValueError, match="NaN/inf"):
        encode_audio({"waveform": torch.full((1, 1, SR), float("inf")), "sample_rate": SR}, phones)
    with pytest.raises(ValueError, match="boundary_ms"):
        PhoneAudioEncoder(boundary_ms=-5)
    with pytest.raises(FileNotFoundError, match="'phones', 'phones\\+mel'"):
        load_audio_encoder("phonez")


# --- checkpoints record the kind and refuse the other one -------------------------------------------------


def _bundle(path, *, kind: str, width: int, n_mels: int | None = None):
    """A tiny random bundle whose audio projection takes ``1 x width`` features, recording encoder ``kind``."""
    make_tiny_bundle(path, audio_features=width, with_vae=False)
    with safe_open(str(path), "pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
    spec = {"type": kind, **({} if n_mels is None else {"n_mels": n_mels})}
    metadata["audio_encoder_config"] = json.dumps(spec)
    save_file(tensors, str(path), metadata=metadata)
    return load_checkpoint(path)


def test_a_phones_checkpoint_brings_its_encoder_and_refuses_mel(tmp_path):
    ckpt = _bundle(tmp_path / "phones.safetensors", kind="phones", width=len(PHONES))
    own = audio_encoder_for(ckpt)  # what generate/evaluate use when no encoder is named
    assert isinstance(own, PhoneAudioEncoder) and own.kind == "phones"
    with pytest.raises(ValueError, match=r"'phones' audio encoder but was given 'mel'"):
        audio_encoder_for(ckpt, "mel")
    with pytest.raises(ValueError, match=r"'phones' audio encoder but was given 'phones\+mel'"):
        audio_encoder_for(ckpt, "phones+mel")
    both = _bundle(tmp_path / "both.safetensors", kind="phones+mel", width=len(PHONES) + 80, n_mels=80)
    assert audio_encoder_for(both).feature_dim == len(PHONES) + 80


def test_a_mel_checkpoint_refuses_phones_even_at_the_same_width(tmp_path):
    ckpt = _bundle(tmp_path / "mel.safetensors", kind="mel", width=80, n_mels=80)
    with pytest.raises(ValueError, match=r"'mel' audio encoder but was given 'phones'"):
        audio_encoder_for(ckpt, "phones")
    # 41 mel bands are as wide as the phones: the widths agree, the kinds do not
    narrow = _bundle(tmp_path / "mel41.safetensors", kind="mel", width=len(PHONES), n_mels=len(PHONES))
    assert audio_encoder_for(narrow).feature_dim == len(PHONES)
    with pytest.raises(ValueError, match=r"'mel' audio encoder but was given 'phones'") as error:
        audio_encoder_for(narrow, load_audio_encoder("phones"))
    assert "--audio-encoder mel" in str(error.value)


# --- train with phones: the bundle records the kind, generate takes it from there ------------------------


def test_training_with_phones_records_the_kind_and_the_checkpoint_refuses_mel(tmp_path):
    from letstalk_core.latents import build_vae, load_shipped_config, save_vae
    from letstalk_core.training.config import config_from_dict
    from letstalk_core.training.trainer import TransformerTrainer
    from tests.core.test_training import _has_espeak, tiny_config  # the trainer tests' tiny setup

    if not _has_espeak():
        pytest.skip("espeak-ng is needed by the synthetic world")
    vae_config = load_shipped_config("demo_vae")
    vae_config.update(block_out_channels=[8, 8, 8, 8], norm_num_groups=4, sample_size=32)
    vae = save_vae(build_vae(vae_config, kind="demo_vae", seed=0), tmp_path / "tiny_vae.safetensors")
    values = tiny_config(tmp_path / "run", vae, max_steps=1, batch_size=1)
    values["audio"]["encoder"] = "phones"
    values["data"]["synthetic"]["num_videos"] = 1
    config = config_from_dict(values, base_dir=tmp_path)
    assert config.audio.encoder == "phones"  # a name, not resolved into a path under base_dir
    path = TransformerTrainer(config, show_progress=False).train()
    ckpt = load_checkpoint(path)
    recorded = ckpt.audio_encoder_config
    assert (recorded["type"], recorded["num_layers"], recorded["feature_dim"]) == ("phones", 1, len(PHONES))
    assert "n_mels" not in recorded and "source" not in recorded
    assert audio_encoder_for(ckpt).kind == "phones"
    with pytest.raises(ValueError, match=r"'phones' audio encoder but was given 'mel'"):
        audio_encoder_for(ckpt, "mel")


def test_prepare_with_phones_and_training_that_asks_for_mel_is_refused(tmp_path, pop_bob_mom):
    from letstalk_core.training.config import config_from_dict
    from letstalk_core.training.data import build_source
    from letstalk_core.training.prepare import prepare_dataset, read_manifest
    from safetensors.torch import load_file
    from tests.helpers import write_mp4

    audio, _ = pop_bob_mom
    (tmp_path / "videos").mkdir()
    frames = np.full((int(audio.seconds * 25), 48, 48, 3), 120, np.uint8)  # [N, H, W, 3]
    write_mp4(tmp_path / "videos" / "a.mp4", frames, 25, audio=audio.samples.numpy(), sample_rate=SR)
    out = tmp_path / "prepared"
    report = prepare_dataset(tmp_path / "videos", out, size=32, audio_encoder="phones", detector="none",
                             on_no_face="center", holdout_fraction=0)
    assert report.prepared == ["a.mp4"]
    manifest = read_manifest(out)
    assert (manifest["audio_encoder"]["name"], manifest["audio_encoder"]["feature_dim"]) == ("phones", len(PHONES))
    shard = load_file(out / manifest["videos"][0]["shard"])
    assert shard["audio_features"].shape[1:] == (1, len(PHONES))
    assert shard["audio_features"][:, 0, LIP_COLUMNS].sum(-1).max() > 0.5  # the b/m closures made it in

    def source_for(encoder: str):
        config = config_from_dict({"output_dir": str(tmp_path / "run"), "audio": {"encoder": encoder, "n_mels": 41},
                                   "data": {"source": "prepared", "path": str(out), "resolution": 32},
                                   "vae": {"path": str(tmp_path / "not_read.safetensors")}})
        return build_source(config, load_audio_encoder(encoder, n_mels=41))

    assert source_for("phones").feature_dim == len(PHONES)
    # 41 mel bands are as wide as the phones: refused by the names, not the widths
    with pytest.raises(ValueError, match=r"prepared with the audio encoder 'phones' but audio.encoder is 'mel'"):
        source_for("mel")


def test_phones_and_mel_prepared_together_serve_each_alone(tmp_path, pop_bob_mom):
    """One folder prepared with "phones+mel" trains a "phones" or a "mel" model (the ablation's three front ends on
    the same clips): each is served exactly the features its own encoder computes from the same speech."""
    from letstalk_core.audio import MonoAudio, encode_audio
    from letstalk_core.training.config import config_from_dict
    from letstalk_core.training.data import build_source
    from letstalk_core.training.prepare import prepare_dataset, read_manifest
    from safetensors.torch import load_file
    from tests.helpers import write_mp4

    audio, _ = pop_bob_mom
    (tmp_path / "videos").mkdir()
    frames = np.full((int(audio.seconds * 25), 48, 48, 3), 120, np.uint8)  # [N, H, W, 3]
    write_mp4(tmp_path / "videos" / "a.mp4", frames, 25, audio=audio.samples.numpy(), sample_rate=SR)
    out = tmp_path / "prepared"
    prepare_dataset(tmp_path / "videos", out, size=32, audio_encoder="phones+mel", detector="none",
                    on_no_face="center", holdout_fraction=0)

    def source_for(encoder: str):
        config = config_from_dict({"output_dir": str(tmp_path / "run"), "audio": {"encoder": encoder},
                                   "data": {"source": "prepared", "path": str(out), "resolution": 32},
                                   "vae": {"path": str(tmp_path / "not_read.safetensors")}})
        return build_source(config, load_audio_encoder(encoder))

    both = source_for("phones+mel").load(0).audio_features  # [N, 1, 41 + 80]
    assert both.shape[1:] == (1, len(PHONES) + 80)
    cached = load_file(out / read_manifest(out)["videos"][0]["shard"])["audio"]  # [T] 16 kHz, what was encoded
    speech = MonoAudio(samples=cached, sample_rate=SR, source="the cached speech")
    for name, part in (("phones", both[..., :len(PHONES)]), ("mel", both[..., len(PHONES):])):
        source = source_for(name)
        served = source.load(0).audio_features  # [N, 1, D]
        assert source.feature_dim == served.shape[-1] == part.shape[-1]
        torch.testing.assert_close(served, part)
        own = encode_audio(speech, load_audio_encoder(name), fps=25).features.float()  # [N', 1, D]
        count = min(served.shape[0], own.shape[0])
        assert count >= served.shape[0] - 1
        torch.testing.assert_close(served[:count], own[:count], atol=1e-4, rtol=1e-4)
