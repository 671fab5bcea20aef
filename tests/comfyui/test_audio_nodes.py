"""The audio nodes in real ComfyUI: native LoadAudio -> LetsTalk audio features and frame count."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf

from scripts.comfy_harness import ComfyExecutionError, ComfyValidationError
from tests.helpers import assert_options_exist, make_tiny_bundle, write_portrait


def write_speechlike(path, seconds: float, sample_rate: int, channels: int = 1) -> None:
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t)  # syllable-rate loudness
    tone = envelope * (0.4 * np.sin(2 * np.pi * 180 * t) + 0.2 * np.sin(2 * np.pi * 720 * t))
    data = np.stack([tone] * channels, axis=1).astype(np.float32)
    sf.write(path, data, sample_rate)


def frame_count_workflow(audio_file: str, fps: float, encoder: str = "mel") -> dict:
    return {
        "1": {"class_type": "LoadAudio", "inputs": {"audio": audio_file}},
        "2": {"class_type": "LoadLetsTalkAudioEncoder", "inputs": {"encoder_name": encoder}},
        "3": {"class_type": "LetsTalkEncodeAudio",
              "inputs": {"audio": ["1", 0], "audio_encoder": ["2", 0], "fps": fps}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 1]}},
    }


@pytest.mark.parametrize("seconds,sample_rate,channels,fps", [
    (1.3, 16000, 1, 25.0),
    (2.05, 48000, 2, 29.97),
])
def test_encode_audio_counts_frames(comfy, seconds, sample_rate, channels, fps):
    name = f"speech_{seconds}_{sample_rate}_{channels}.wav"
    write_speechlike(comfy.input_dir / name, seconds, sample_rate, channels)
    outputs = comfy.client.run(frame_count_workflow(name, fps), timeout=300)
    expected = math.ceil(round(seconds * sample_rate) / sample_rate * fps - 1e-9)
    assert outputs["4"]["text"] == [str(expected)]


def test_unknown_audio_encoder_is_refused_by_name(comfy):
    write_speechlike(comfy.input_dir / "ok.wav", 0.5, 16000)
    with pytest.raises(ComfyValidationError) as info:
        comfy.client.submit(frame_count_workflow("ok.wav", 25.0, encoder="no_such_encoder.safetensors"))
    assert "LoadLetsTalkAudioEncoder" in str(info.value) and "encoder_name" in str(info.value)
    [details] = [error["details"].split(" - ", 1)[1] for node in info.value.node_errors.values()
                 for error in node["errors"]]  # ComfyUI writes "<input> - <the node's message>"
    assert details.startswith("encoder_name: 'no_such_encoder.safetensors' is none of mel, phones, phones+mel")
    assert_options_exist(comfy, "LoadLetsTalkAudioEncoder", details)


def test_audio_shorter_than_a_frame_fails_naming_the_node_and_server_keeps_serving(comfy):
    write_speechlike(comfy.input_dir / "blip.wav", 0.01, 16000)  # 10 ms < one 40 ms frame
    with pytest.raises(ComfyExecutionError) as info:
        comfy.client.run(frame_count_workflow("blip.wav", 25.0), timeout=300)
    assert info.value.node_type == "LetsTalkEncodeAudio"
    assert "shorter than one video frame" in info.value.exception_message
    write_speechlike(comfy.input_dir / "after.wav", 0.4, 16000)
    assert comfy.client.run(frame_count_workflow("after.wav", 25.0), timeout=300)["4"]["text"] == ["10"]


def test_wav2vec2_from_comfyui_loader_and_from_the_packs_loader(comfy):
    """A wav2vec2-base-sized encoder (random weights) loaded by ComfyUI's own AudioEncoderLoader."""
    import torch
    from safetensors.torch import save_file
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(0)
    model = Wav2Vec2Model(Wav2Vec2Config())  # base: 12 layers x 768
    name = "w2v_base_random.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, comfy.models_dir / "audio_encoders" / name)
    del model
    write_speechlike(comfy.input_dir / "native.wav", 0.6, 16000)
    workflow = {
        "1": {"class_type": "LoadAudio", "inputs": {"audio": "native.wav"}},
        "2": {"class_type": "AudioEncoderLoader", "inputs": {"audio_encoder_name": name}},
        "3": {"class_type": "LetsTalkEncodeAudio", "inputs": {"audio": ["1", 0], "audio_encoder": ["2", 0], "fps": 25.0}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 1]}},
    }
    assert comfy.client.run(workflow, timeout=600)["4"]["text"] == ["15"]
    assert "Requested to load LetsTalkAudioEncoderWeights" in comfy.log()  # under ComfyUI's model management

    # the converted encoder's features drive a model that expects wav2vec2-base features (12 x 768)
    make_tiny_bundle(comfy.models_dir / "letstalk" / "w2v_tiny.safetensors", audio_layers=12, audio_features=768)
    write_portrait(comfy.input_dir / "w2v_face.png")
    workflow.update({
        "5": {"class_type": "LoadImage", "inputs": {"image": "w2v_face.png"}},
        "6": {"class_type": "LoadLetsTalkModel", "inputs": {"checkpoint": "w2v_tiny.safetensors", "precision": "fp32"}},
        "7": {"class_type": "LetsTalkPortraitCondition",
              "inputs": {"image": ["5", 0], "letstalk_model": ["6", 0], "crop_face": False, "margin": 0.5,
                         "if_no_face": "center crop"}},
        "8": {"class_type": "LetsTalkSampler",
              "inputs": {"letstalk_model": ["6", 0], "portrait": ["7", 0], "letstalk_audio": ["3", 0], "seed": 0,
                         "sampler": "ddim", "steps": 1, "audio_cfg": 1.0, "portrait_cfg": 1.0}},
        "9": {"class_type": "LetsTalkDecodeVideo", "inputs": {"sampled_video": ["8", 0], "paste_back": False}},
        "10": {"class_type": "PreviewAny", "inputs": {"source": ["9", 2]}},
    })
    assert comfy.client.run(workflow, timeout=600)["10"]["text"] == ["25.0"]

    # the same file through the pack's own loader (Hugging Face key names, config read off the shapes)
    workflow["11"] = {"class_type": "LoadLetsTalkAudioEncoder", "inputs": {"encoder_name": name}}
    workflow["3"]["inputs"]["audio_encoder"] = ["11", 0]
    workflow["8"]["inputs"]["seed"] = 1
    assert comfy.client.run(workflow, timeout=600)["10"]["text"] == ["25.0"]


def test_a_transcript_reaches_a_phones_encoder_and_a_mel_one_says_it_ignores_it(comfy):
    """The Encode Speech node's optional transcript socket, fed by ComfyUI's String (Multiline): checked against
    the aligner's dictionary for a phones encoder (a word it lacks stops the node, named), noted as ignored for
    log-mel. A socket, not a widget: the shipped workflows and their API twins stay as they are."""
    write_speechlike(comfy.input_dir / "said.wav", 0.8, 16000)

    def with_words(words: str, encoder: str) -> dict:
        workflow = frame_count_workflow("said.wav", 25.0, encoder=encoder)
        workflow["5"] = {"class_type": "PrimitiveStringMultiline", "inputs": {"value": words}}
        workflow["3"]["inputs"]["transcript"] = ["5", 0]
        return workflow

    assert comfy.client.run(with_words("bin blue at f two now", "phones"), timeout=300)["4"]["text"] == ["20"]
    with pytest.raises(ComfyExecutionError) as info:
        comfy.client.run(with_words("bin blue qzxv", "phones"), timeout=300)
    assert info.value.node_type == "LetsTalkEncodeAudio"
    assert "'qzxv' is not in the CMU US-English dictionary" in info.value.exception_message
    assert comfy.client.run(with_words("bin blue", "mel"), timeout=300)["4"]["text"] == ["20"]
    assert "the transcript is ignored: this speech encoder (mel) does not read words" in comfy.log()
    spec = comfy.client.object_info("LetsTalkEncodeAudio")["LetsTalkEncodeAudio"]["input"]["optional"]["transcript"]
    assert spec[0] == "STRING" and spec[1].get("forceInput") is True
