"""``load_audio_encoder``: "mel", "phones", "phones+mel", a Hugging Face folder, or a single weights
file -> an AudioEncoder.

Everything is read from local files (``local_files_only=True``); nothing is fetched from the hub.

Accepted forms:

* ``"mel"``: the weight-free log-mel filterbank (:class:`MelAudioEncoder`).
* ``"phones"``: a soft US-English phone distribution per frame from pocketsphinx's bundled CMU model
  (:class:`PhoneAudioEncoder`); speech that is not English still gets phones (the nearest English ones).
  ``"phones+mel"``: the same with the log-mel bands appended in the one layer.
* A Hugging Face folder with ``config.json`` (``model_type`` "wav2vec2" or "whisper") and
  ``model.safetensors`` (or ``pytorch_model.bin``, or a sharded ``model.safetensors.index.json``);
  ``preprocessor_config.json`` is honoured when present.
* One ``.safetensors`` (or ``.bin``/``.pt``/``.pth``) file, as ComfyUI keeps them in
  ``models/audio_encoders/``. Key names may be Hugging Face's (``wav2vec2.encoder...`` from a CTC or
  pre-training checkpoint, ``model.encoder...`` from a whisper checkpoint) or ComfyUI's own (no prefix,
  positional-conv weight norm as ``parametrizations.weight.original0/1`` or ``weight_g/weight_v``).
  The architecture is inferred from tensor shapes; attention heads are taken as width / 64 (true for
  every released wav2vec2 and whisper size), or pass ``config=`` to say otherwise.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..encoder_names import NAMED_ENCODERS, named_encoder
from ..weights import read_weights
from .encoder_base import AudioEncoder
from .mel import MelAudioEncoder
from .phones import PhoneAudioEncoder
from .wav2vec2 import Wav2Vec2AudioEncoder
from .whisper import TOKENS_PER_SECOND, WhisperAudioEncoder

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# Released wav2vec2 CNNs: kernels (10, 3, 3, 3, 3, 2, 2) with strides (5, 2, 2, 2, 2, 2, 2).
_STANDARD_CONV_STRIDES = {(10, 3, 3, 3, 3, 2, 2): (5, 2, 2, 2, 2, 2, 2)}
# Parts of full checkpoints that the encoders do not use (CTC head, quantizer, whisper decoder, ...).
_UNUSED_PREFIXES = ("lm_head.", "quantizer.", "project_hid.", "project_q.", "decoder.", "proj_out.",
                    "classifier.", "projector.", "dropout_features.")


def load_audio_encoder(
    path_or_name,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    config=None,
    normalize_waveform: bool | None = None,
    chunk_seconds: float = 30.0,
    context_seconds: float = 5.0,
    n_mels: int = 80,
    include_embedding_layer: bool = True,
) -> AudioEncoder:
    """Load an audio encoder from ``"mel"``, ``"phones"``, ``"phones+mel"``, a Hugging Face folder or a
    single weights file.

    ``config``: a ``Wav2Vec2Config``/``WhisperConfig`` (or dict) for single files whose shapes do not
    say everything. ``normalize_waveform``: wav2vec2 feature-extractor normalisation; default from
    ``preprocessor_config.json``, else on (official). ``chunk_seconds``/``context_seconds``: wav2vec2
    long-audio chunking. ``include_embedding_layer``: whisper keeps its embedding output as layer 0.
    """
    name = named_encoder(path_or_name)
    if name == "mel":
        return MelAudioEncoder(n_mels=n_mels)
    if name is not None:
        return PhoneAudioEncoder(with_mel=name == "phones+mel", n_mels=n_mels)
    path = Path(path_or_name)
    if not path.exists():
        raise FileNotFoundError(
            f"audio encoder '{path_or_name}' not found; give 'mel', 'phones', 'phones+mel', a Hugging Face "
            "folder (config.json + "
            "model.safetensors) or a .safetensors file such as ComfyUI's models/audio_encoders/ files"
        )
    if path.is_dir():
        kind, model_config, state_dict, preprocessor = _read_folder(path, config)
    else:
        if path.suffix.lower() not in WEIGHT_SUFFIXES:
            raise ValueError(f"audio encoder file '{path}' has an unknown extension; accepted: {', '.join(WEIGHT_SUFFIXES)}")
        state_dict, preprocessor = _read_weights(path), {}
        kind = _detect_kind(state_dict, path)
        model_config = None if config is None else _as_config(kind, config)
    source = f"'{path}'"
    if kind == "wav2vec2":
        if normalize_waveform is None:
            normalize_waveform = bool(preprocessor.get("do_normalize", True))
        return wav2vec2_encoder_from_state_dict(state_dict, source=source, config=model_config, device=device,
                                                dtype=dtype, normalize_waveform=normalize_waveform,
                                                chunk_seconds=chunk_seconds, context_seconds=context_seconds)
    encoder, feature_extractor = _build_whisper(state_dict, model_config, path, preprocessor)
    return WhisperAudioEncoder(encoder.to(device, dtype), feature_extractor, source=source,
                               include_embedding_layer=include_embedding_layer)


def wav2vec2_encoder_from_state_dict(
    state_dict: dict[str, torch.Tensor],
    *,
    source: str = "wav2vec2 state dict",
    config=None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    normalize_waveform: bool = True,
    chunk_seconds: float = 30.0,
    context_seconds: float = 5.0,
) -> Wav2Vec2AudioEncoder:
    """A wav2vec2 encoder from weights already in memory (Hugging Face or ComfyUI key names), e.g. the
    model of ComfyUI's own AudioEncoderLoader. ``normalize_waveform`` defaults to the official recipe."""
    model = _build_wav2vec2(state_dict, None if config is None else _as_config("wav2vec2", config), Path(source))
    return Wav2Vec2AudioEncoder(model.to(device, dtype), source=source, normalize_waveform=normalize_waveform,
                                chunk_seconds=chunk_seconds, context_seconds=context_seconds)


def audio_encoder_from_state_dict(
    state_dict: dict[str, torch.Tensor],
    kind: str,
    *,
    config=None,
    source: str = "audio encoder state dict",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    normalize_waveform: bool = True,
) -> AudioEncoder:
    """A wav2vec2 or whisper encoder from weights in memory (e.g. the ``audio_encoder.`` part of a
    checkpoint bundle); ``config`` is its transformers config (object or dict), else read off the shapes."""
    if kind == "wav2vec2":
        return wav2vec2_encoder_from_state_dict(state_dict, source=source, config=config, device=device, dtype=dtype,
                                                normalize_waveform=normalize_waveform)
    if kind == "whisper":
        model_config = None if config is None else _as_config("whisper", config)
        encoder, feature_extractor = _build_whisper(state_dict, model_config, Path(source), {})
        return WhisperAudioEncoder(encoder.to(device, dtype), feature_extractor, source=source)
    raise ValueError(f"{source}: audio encoder type {kind!r} is not known; accepted: 'wav2vec2', 'whisper' "
                     "(and 'mel', 'phones', 'phones+mel', which have no weights)")


# --- reading files -------------------------------------------------------------------------------


def _read_folder(folder: Path, config):
    config_file = folder / "config.json"
    weight_names = ["model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"]
    weights = next((folder / name for name in weight_names if (folder / name).exists()), None)
    missing = ([] if config_file.exists() or config is not None else ["config.json"]) + (
        [] if weights else [" or ".join(weight_names)])
    if missing:
        raise FileNotFoundError(
            f"audio encoder folder '{folder}' lacks {', '.join(missing)}; a Hugging Face wav2vec2/whisper folder "
            "needs config.json and model.safetensors (or pytorch_model.bin)"
        )
    if config is None:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    kind = _kind_from_config(config, folder)
    preprocessor_file = folder / "preprocessor_config.json"
    preprocessor = json.loads(preprocessor_file.read_text()) if preprocessor_file.exists() else {}
    if weights.name.endswith(".index.json"):
        shards = sorted(set(json.loads(weights.read_text())["weight_map"].values()))
        state_dict = {}
        for shard in shards:
            if not (folder / shard).exists():
                raise FileNotFoundError(f"audio encoder folder '{folder}' lacks the weight shard {shard}")
            state_dict.update(_read_weights(folder / shard))
    else:
        state_dict = _read_weights(weights)
    return kind, _as_config(kind, config), state_dict, preprocessor


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    return read_weights(path, "audio encoder file")[0]


def _kind_from_config(config, where) -> str:
    model_type = config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)
    if model_type in ("wav2vec2", "whisper"):
        return model_type
    raise ValueError(f"audio encoder {where}: model_type {model_type!r} is not supported; use wav2vec2 or whisper")


def _as_config(kind: str, config):
    from transformers import Wav2Vec2Config, WhisperConfig

    config_class = Wav2Vec2Config if kind == "wav2vec2" else WhisperConfig
    if isinstance(config, dict):
        return config_class(**{k: v for k, v in config.items() if k != "model_type"})
    if not isinstance(config, config_class):
        raise ValueError(f"config for a {kind} encoder must be a {config_class.__name__} or dict, got {type(config).__name__}")
    return config


def _detect_kind(state_dict: dict, path: Path) -> str:
    keys = state_dict.keys()
    if any(re.search(r"(^|\.)feature_extractor\.conv_layers\.0\.conv\.weight$", k) for k in keys):
        return "wav2vec2"
    if any(k.endswith("encoder.embed_positions.weight") or k == "embed_positions.weight" for k in keys):
        return "whisper"
    raise ValueError(
        f"audio encoder file '{path}' is neither a wav2vec2 nor a whisper state dict "
        f"(first keys: {sorted(keys)[:5]}); supported: wav2vec2 (HF or ComfyUI naming) and whisper encoders"
    )


# --- wav2vec2 ------------------------------------------------------------------------------------


def wav2vec2_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face or ComfyUI wav2vec2 keys -> the keys of transformers' ``Wav2Vec2Model``."""
    renamed = {}
    for key, value in state_dict.items():
        key = re.sub(r"^(model\.)?(wav2vec2\.)", "", key)
        key = key.replace("pos_conv_embed.conv.weight_g", "pos_conv_embed.conv.parametrizations.weight.original0")
        key = key.replace("pos_conv_embed.conv.weight_v", "pos_conv_embed.conv.parametrizations.weight.original1")
        if key.startswith(_UNUSED_PREFIXES):
            continue
        renamed[key] = value
    return renamed


def infer_wav2vec2_config(state_dict: dict[str, torch.Tensor], where="state dict"):
    """A ``Wav2Vec2Config`` read off the tensor shapes of a (renamed) wav2vec2 state dict."""
    from transformers import Wav2Vec2Config

    try:
        hidden = state_dict["encoder.layer_norm.weight"].shape[0]
        layer_ids = {int(m.group(1)) for k in state_dict if (m := re.match(r"encoder\.layers\.(\d+)\.", k))}
        conv_ids = sorted(int(m.group(1)) for k in state_dict
                          if (m := re.match(r"feature_extractor\.conv_layers\.(\d+)\.conv\.weight$", k)))
        conv_weights = [state_dict[f"feature_extractor.conv_layers.{i}.conv.weight"] for i in conv_ids]
        intermediate = state_dict["encoder.layers.0.feed_forward.intermediate_dense.weight"].shape[0]
        pos_conv = state_dict["encoder.pos_conv_embed.conv.parametrizations.weight.original1"]
    except KeyError as err:
        raise ValueError(f"wav2vec2 {where} lacks {err.args[0]}; it is not a complete wav2vec2 encoder") from err
    kernels = tuple(int(w.shape[2]) for w in conv_weights)
    if kernels not in _STANDARD_CONV_STRIDES:
        raise ValueError(f"wav2vec2 {where} has CNN kernels {kernels}; pass config= with its conv_stride")
    if hidden % 64:
        raise ValueError(f"wav2vec2 {where} has width {hidden}, not a multiple of 64; pass config= with num_attention_heads")
    layer_norm_cnn = "feature_extractor.conv_layers.1.layer_norm.weight" in state_dict
    return Wav2Vec2Config(
        hidden_size=hidden,
        num_hidden_layers=max(layer_ids) + 1,
        num_attention_heads=hidden // 64,
        intermediate_size=intermediate,
        conv_dim=tuple(int(w.shape[0]) for w in conv_weights),
        conv_kernel=kernels,
        conv_stride=_STANDARD_CONV_STRIDES[kernels],
        conv_bias="feature_extractor.conv_layers.1.conv.bias" in state_dict,
        feat_extract_norm="layer" if layer_norm_cnn else "group",
        do_stable_layer_norm=layer_norm_cnn,  # pre-LN transformers come with layer-norm CNNs (large-lv60, xlsr)
        num_conv_pos_embeddings=int(pos_conv.shape[2]),
        num_conv_pos_embedding_groups=hidden // int(pos_conv.shape[1]),
    )


def _build_wav2vec2(state_dict, config, path: Path):
    from transformers import Wav2Vec2Model

    state_dict = wav2vec2_state_dict(state_dict)
    config = config if config is not None else infer_wav2vec2_config(state_dict, f"file '{path}'")
    model = Wav2Vec2Model(config)
    _load_strict(model, state_dict, f"wav2vec2 encoder '{path}'", optional={"masked_spec_embed"})
    return model.float().eval()


# --- whisper -------------------------------------------------------------------------------------


def whisper_encoder_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face (``model.encoder.``/``encoder.``) or ComfyUI whisper keys -> ``WhisperEncoder`` keys."""
    renamed = {}
    for key, value in state_dict.items():
        key = re.sub(r"^(model\.)?encoder\.", "", key)
        if key.startswith(_UNUSED_PREFIXES) or key.startswith("model.decoder."):
            continue
        renamed[key] = value
    return renamed


def infer_whisper_config(state_dict: dict[str, torch.Tensor], where="state dict"):
    """A ``WhisperConfig`` read off the tensor shapes of a (renamed) whisper encoder state dict."""
    from transformers import WhisperConfig

    try:
        conv1 = state_dict["conv1.weight"]  # [d_model, n_mels, 3]
        positions = state_dict["embed_positions.weight"]  # [max_source_positions, d_model]
        ffn = state_dict["layers.0.fc1.weight"].shape[0]
    except KeyError as err:
        raise ValueError(f"whisper {where} lacks {err.args[0]}; it is not a complete whisper encoder") from err
    d_model = int(conv1.shape[0])
    if d_model % 64:
        raise ValueError(f"whisper {where} has width {d_model}, not a multiple of 64; pass config= with encoder_attention_heads")
    layers = 1 + max(int(m.group(1)) for k in state_dict if (m := re.match(r"layers\.(\d+)\.", k)))
    return WhisperConfig(
        d_model=d_model, encoder_layers=layers, encoder_attention_heads=d_model // 64, encoder_ffn_dim=ffn,
        num_mel_bins=int(conv1.shape[1]), max_source_positions=int(positions.shape[0]),
    )


def _build_whisper(state_dict, config, path: Path, preprocessor: dict):
    from transformers import WhisperFeatureExtractor
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    state_dict = whisper_encoder_state_dict(state_dict)
    config = config if config is not None else infer_whisper_config(state_dict, f"file '{path}'")
    encoder = WhisperEncoder(config)
    _load_strict(encoder, state_dict, f"whisper encoder '{path}'")
    if config.max_source_positions % TOKENS_PER_SECOND:
        raise ValueError(f"whisper encoder '{path}': max_source_positions {config.max_source_positions} is not whole seconds")
    window_seconds = config.max_source_positions // TOKENS_PER_SECOND
    settings = {k: preprocessor[k] for k in ("hop_length", "n_fft", "padding_value") if k in preprocessor}
    feature_extractor = WhisperFeatureExtractor(
        feature_size=config.num_mel_bins, sampling_rate=16_000, chunk_length=window_seconds, **settings
    )
    return encoder.float().eval(), feature_extractor


def _load_strict(module: torch.nn.Module, state_dict: dict, what: str, optional: set[str] = frozenset()) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict) - set(optional))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{what} does not match its architecture: missing {len(missing)} tensors {missing[:4]}, "
            f"unexpected {len(unexpected)} {unexpected[:4]}"
        )
    wrong = [f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
             for k, v in state_dict.items() if tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        raise ValueError(f"{what} has tensors of the wrong shape: {wrong[:4]}")
    module.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=False)
