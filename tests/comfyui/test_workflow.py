"""The bundled API workflow in real ComfyUI, with a tiny random bundle in models/letstalk/."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from letstalk_core.video import probe
from scripts.comfy_harness import ComfyExecutionError, ComfyValidationError
from tests.helpers import (TEMPLATES, TINY_FRAMES_PER_CLIP, TINY_SAMPLER_INPUTS, assert_options_exist, make_tiny_bundle,
                           write_portrait, write_speechlike)

REPO = Path(__file__).resolve().parents[2]
BASIC = json.loads((REPO / "workflows" / "api" / "letstalk_basic_api.json").read_text())
# how far the frames of a half-precision model may be from fp32's, mean over pixels on 0..255
# (measured on the tiny random bundle with guidance: bf16 0.10, max 3; fp16 0.014, max 1)
MEAN_PIXEL_DIFFERENCE = {"bf16": 1.0, "fp16": 0.25}


@pytest.fixture(scope="module")
def tiny(comfy):
    make_tiny_bundle(comfy.models_dir / "letstalk" / "tiny.safetensors")
    write_portrait(comfy.input_dir / "face.png")
    write_speechlike(comfy.input_dir / "talk.wav", 1.0, sample_rate=22050, channels=2)
    return comfy


def basic_workflow(**changes) -> dict:
    workflow = copy.deepcopy(BASIC)
    workflow["1"]["inputs"]["image"] = "face.png"
    workflow["2"]["inputs"]["audio"] = "talk.wav"
    workflow["3"]["inputs"]["checkpoint"] = "tiny.safetensors"
    workflow["7"]["inputs"].update(sampler="ddim", steps=2, **TINY_SAMPLER_INPUTS)
    for key, value in changes.items():
        node, name = key.split("__")
        workflow[node]["inputs"][name] = value
    return workflow


def saved_videos(comfy, outputs: dict) -> list[Path]:
    files = []
    for node_outputs in outputs.values():
        for items in node_outputs.values():
            for item in items if isinstance(items, list) else []:
                if isinstance(item, dict) and item.get("type") == "output" and "filename" in item:
                    files.append(comfy.default_output_dir / item["subfolder"] / item["filename"])
    return files


def test_basic_workflow_saves_a_talking_mp4(tiny):
    outputs = tiny.client.run(basic_workflow(**{"10__filename_prefix": "letstalk/basic"}), timeout=600)
    [video] = saved_videos(tiny, outputs)
    info = probe(video)
    assert info.frame_count == math.ceil(1.0 * 25)
    assert info.has_audio
    assert abs(info.audio_duration - info.frame_count / float(info.fps)) <= 1 / float(info.fps)
    assert (info.width, info.height) == (96, 96)  # the face pasted back into the 96 px portrait
    assert (info.audio_sample_rate, info.audio_channels) == (22050, 2)  # talk.wav as it came in
    # the transformer and the bundle's VAE went through ComfyUI's model management (its own log line)
    log = tiny.log()
    assert "Requested to load PatchableParts" in log and "Requested to load LetsTalkVAE" in log


def run_noting_cached(comfy, workflow) -> tuple[dict, list]:
    """Outputs of one prompt and the ids of the nodes ComfyUI took from its cache."""
    entry = comfy.client.wait(comfy.client.submit(workflow))
    cached = [node for kind, data in entry["status"]["messages"] if kind == "execution_cached"
              for node in data.get("nodes", [])]
    return entry["outputs"], cached


def saved_pngs(comfy, outputs: dict) -> list[np.ndarray]:
    items = [item for node_outputs in outputs.values() for item in node_outputs.get("images", [])]
    return [np.asarray(Image.open(comfy.default_output_dir / item["subfolder"] / item["filename"]))
            for item in items]


def test_same_seed_gives_identical_frames(tiny):
    """Sampling twice with one seed gives the same frames, compared losslessly (PNG).

    The second prompt reads byte-identical copies of the checkpoint, portrait and speech under other
    names, so ComfyUI loads, encodes and samples again instead of answering from its cache. The frames are saved
    as PNGs rather than through Save Video: re-encoding one cached video twice with ComfyUI's h264
    encoder gave different last frames on a CI machine, which says nothing about this pack."""
    for name in ("models/letstalk/tiny.safetensors", "input/face.png", "input/talk.wav"):
        source = tiny.base_dir / name
        shutil.copyfile(source, source.with_name("again_" + source.name))

    def frames_workflow(prefix: str, again: bool) -> dict:
        files = {"3__checkpoint": "tiny.safetensors", "1__image": "face.png", "2__audio": "talk.wav"}
        workflow = basic_workflow(**{"7__seed": 5, **{key: ("again_" if again else "") + value
                                                      for key, value in files.items()}})
        del workflow["9"], workflow["10"]
        workflow["11"] = {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": prefix}}
        return workflow

    first, _ = run_noting_cached(tiny, frames_workflow("same_seed/a", again=False))
    second, second_cached = run_noting_cached(tiny, frames_workflow("same_seed/b", again=True))
    recomputed = {"1", "2", "3", "5", "6", "7", "8"}  # all but the mel encoder's loader, which reads no file
    assert not recomputed & set(second_cached), f"the second prompt took nodes {second_cached} from the cache"
    a, b = saved_pngs(tiny, first), saved_pngs(tiny, second)
    assert len(a) == len(b) == 25
    differing = [k for k in range(len(a)) if (a[k] != b[k]).any()]
    assert not differing, f"frames {differing} differ between two samplings with seed 5"


def test_the_graph_in_bf16_and_fp16_gives_the_fp32_frames_within_rounding(tiny):
    """The loader's precision widget: the transformer in bf16 or fp16 meets the fp32 codec, audio encoder,
    guidance and memory frames without a dtype mismatch, and the frames stay near fp32's (PNG, 0..255)."""

    guided = tiny.models_dir / "letstalk" / "guided.safetensors"
    if not guided.is_file():
        make_tiny_bundle(guided, condition_dropout={"audio": 0.1, "portrait": 0.1, "both": 0.1})

    def frames(precision: str) -> np.ndarray:
        workflow = basic_workflow(**{"3__checkpoint": "guided.safetensors", "3__precision": precision, "7__seed": 3,
                                     "7__audio_cfg": 2.0, "7__portrait_cfg": 1.5})
        del workflow["9"], workflow["10"]
        workflow["11"] = {"class_type": "SaveImage", "inputs": {"images": ["8", 0],
                                                               "filename_prefix": f"precision/{precision}"}}
        return np.stack(saved_pngs(tiny, tiny.client.run(workflow, timeout=600))).astype(np.float32)

    exact = frames("fp32")
    for precision in ("bf16", "fp16"):
        made = frames(precision)
        assert made.shape == exact.shape
        difference = np.abs(made - exact)
        assert difference.mean() < MEAN_PIXEL_DIFFERENCE[precision], (precision, float(difference.mean()))
        assert difference.max() > 0, f"{precision} gave fp32's frames exactly: the widget changed nothing"
    assert "LetsTalk model guided.safetensors" in tiny.log() and "torch.bfloat16" in tiny.log()


def test_the_bundled_vae_takes_comfyuis_vae_dtype(tmp_path):
    """--bf16-vae (ComfyUI's own flag; on a GPU with bf16 its default) puts the bundle's VAE in bf16: the
    portrait is encoded, previews and frames decoded through it, beside an fp32 transformer."""
    from scripts.comfy_harness import ComfyServer

    with ComfyServer(tmp_path / "base", extra_args=("--bf16-vae",)) as server:
        make_tiny_bundle(server.models_dir / "letstalk" / "tiny.safetensors")
        write_portrait(server.input_dir / "face.png")
        write_speechlike(server.input_dir / "talk.wav", 0.5)
        [video] = saved_videos(server, server.client.run(basic_workflow(**{"10__filename_prefix": "bf16vae/x"})))
        assert probe(video).frame_count == 13
        assert "its VAE in torch.bfloat16" in server.log()


def test_paste_back_gives_frames_at_the_portrait_size(tiny):
    write_portrait(tiny.input_dir / "wide.png", extra_width=40)
    workflow = basic_workflow(**{"1__image": "wide.png", "8__paste_back": True, "10__filename_prefix": "paste/x"})
    [video] = saved_videos(tiny, tiny.client.run(workflow))
    assert (probe(video).width, probe(video).height) == (136, 96)


@pytest.mark.parametrize("change,node,needle", [
    ({"3__checkpoint": "missing.safetensors"}, "3", "checkpoint"),
    ({"7__steps": 0}, "7", "steps"),
    ({"7__sampler": "plms"}, "7", "sampler"),
])
def test_refused_inputs_name_node_and_input(tiny, change, node, needle):
    with pytest.raises(ComfyValidationError) as info:
        tiny.client.submit(basic_workflow(**change))
    assert node in info.value.node_errors
    assert needle in str(info.value)


def test_failures_name_the_node_and_the_next_prompt_succeeds(tiny):
    (tiny.models_dir / "letstalk" / "corrupt.safetensors").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ComfyExecutionError) as info:
        tiny.client.run(basic_workflow(**{"3__checkpoint": "corrupt.safetensors"}))
    assert info.value.node_type == "LoadLetsTalkModel"
    assert "corrupt.safetensors" in info.value.exception_message

    write_speechlike(tiny.input_dir / "blip.wav", 0.01)
    with pytest.raises(ComfyExecutionError) as info:
        tiny.client.run(basic_workflow(**{"2__audio": "blip.wav"}))
    assert info.value.node_type == "LetsTalkEncodeAudio"
    assert "shorter than one video frame" in info.value.exception_message

    outputs = tiny.client.run(basic_workflow(**{"10__filename_prefix": "after/x"}))
    assert probe(saved_videos(tiny, outputs)[0]).frame_count == 25


def test_overlap_frames_beyond_the_clip_fail_by_name_and_older_prompts_without_it_run(tiny):
    with pytest.raises(ComfyExecutionError) as info:
        tiny.client.run(basic_workflow(**{"7__overlap_frames": 4}))  # the tiny model's clips have 4 frames
    assert info.value.node_type == "LetsTalkSampler"
    assert "overlap_frames must be an integer from 0 to frames_per_clip - 1 = 3" in info.value.exception_message
    older = basic_workflow(**{"10__filename_prefix": "no_overlap/x"})
    del older["7"]["inputs"]["overlap_frames"]  # a prompt saved before the input existed
    outputs = tiny.client.run(older)
    assert probe(saved_videos(tiny, outputs)[0]).frame_count == 25


def test_the_terminal_shows_the_settings_each_clip_and_a_missing_face(tiny):
    from PIL import Image

    from letstalk_core.sampling import clip_plan

    Image.new("RGB", (96, 96), (128, 128, 128)).save(tiny.input_dir / "blank.png")
    before = len(tiny.log())
    outputs = tiny.client.run(basic_workflow(**{"1__image": "blank.png", "6__if_no_face": "center crop",
                                                "10__filename_prefix": "blank/x"}))
    assert saved_videos(tiny, outputs)
    log = tiny.log()[before:]
    assert "LetsTalk: no face found in the image, so its centre square is animated" in log
    assert "LetsTalk sampling: ddim 2 steps, audio guidance 1" in log
    clips = len(clip_plan(25, TINY_FRAMES_PER_CLIP, TINY_SAMPLER_INPUTS["overlap_frames"]))
    for done in range(1, clips + 1):
        assert f"LetsTalk: clip {done}/{clips} done" in log, log[-2000:]
    assert "about 0 s left" in log


def test_a_portrait_without_a_face_stops_by_default_naming_the_option_and_every_message_names_real_options(tiny):
    """if_no_face at its default stops before the sampler runs, with a message naming the node's own option
    and value; other refusals of the nodes name their inputs as the nodes show them."""
    Image.new("RGB", (96, 96), (128, 128, 128)).save(tiny.input_dir / "blank.png")
    before = len(tiny.log())
    with pytest.raises(ComfyExecutionError) as info:
        tiny.client.run(basic_workflow(**{"1__image": "blank.png", "10__filename_prefix": "stopped/x"}))
    assert info.value.node_type == "LetsTalkPortraitCondition"
    assert "no face was found in the 96x96 image, so nothing was sampled" in info.value.exception_message
    assert "set if_no_face to 'center crop'" in info.value.exception_message
    assert_options_exist(tiny, "LetsTalkPortraitCondition", info.value.exception_message)
    assert "LetsTalk: clip" not in tiny.log()[before:], "nothing was sampled"
    with pytest.raises(ComfyValidationError) as refused:
        tiny.client.run(basic_workflow(**{"7__steps": 0}))
    for node_errors in refused.value.node_errors.values():
        for error in node_errors["errors"]:  # ComfyUI writes "<input> - <the node's message>"
            assert_options_exist(tiny, node_errors["class_type"], error["details"].split(" - ", 1)[1])


def test_a_sampler_added_by_hand_starts_at_the_basic_workflows_settings(tiny):
    """Both leave the sampling to the checkpoint ("auto", -1), so they make the same video with any model."""
    spec = tiny.client.object_info()["LetsTalkSampler"]["input"]
    defaults = {name: value[1]["default"] for section in ("required", "optional")
                for name, value in spec.get(section, {}).items()
                if name in ("sampler", "steps", "audio_cfg", "portrait_cfg", "overlap_frames")}
    shipped = json.loads((REPO / "workflows" / "api" / "letstalk_basic_api.json").read_text())["7"]["inputs"]
    assert len(defaults) == 5 and defaults == {name: shipped[name] for name in defaults}


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_ui_workflows_match_their_api_twins(tiny, name):
    from scripts.workflow_ui import ui_to_api

    ui = json.loads((REPO / "workflows" / f"{name}.json").read_text())
    api = json.loads((REPO / "workflows" / "api" / f"{TEMPLATES[name]}.json").read_text())
    converted = ui_to_api(ui, tiny.client.object_info())
    assert {k: v["inputs"] for k, v in converted.items()} == {k: v["inputs"] for k, v in api.items()}


def test_ui_workflow_converts_and_runs(tiny):
    from scripts.workflow_ui import ui_to_api

    ui = json.loads((REPO / "workflows" / "LetsTalk portrait to talking video.json").read_text())
    converted = ui_to_api(ui, tiny.client.object_info())
    converted["1"]["inputs"]["image"] = "face.png"
    converted["2"]["inputs"]["audio"] = "talk.wav"
    converted["3"]["inputs"]["checkpoint"] = "tiny.safetensors"
    converted["7"]["inputs"].update(sampler="ddim", steps=2, **TINY_SAMPLER_INPUTS)
    converted["10"]["inputs"]["filename_prefix"] = "ui/x"
    [video] = saved_videos(tiny, tiny.client.run(converted))
    assert probe(video).frame_count == 25


def test_unchanged_prompt_reruns_nothing(tiny):
    workflow = basic_workflow(**{"7__seed": 11, "10__filename_prefix": "cache/x"})
    tiny.client.run(workflow)
    entry = tiny.client.wait(tiny.client.submit(workflow))
    cached = [m[1]["nodes"] for m in entry["status"]["messages"] if m[0] == "execution_cached"]
    assert cached and set(cached[0]) == set(workflow)


def test_five_prompts_back_to_back(tiny):
    ids = [tiny.client.submit(basic_workflow(**{"7__seed": 100 + i, "10__filename_prefix": f"q{i}/x"}))
           for i in range(5)]
    for prompt_id in ids:
        entry = tiny.client.wait(prompt_id, timeout=600)
        assert entry["status"]["status_str"] == "success"


def test_interrupt_stops_sampling_and_the_next_prompt_succeeds(tiny):
    import time

    from scripts.comfy_harness import ComfyInterrupted

    write_speechlike(tiny.input_dir / "long.wav", 8.0)
    workflow = basic_workflow(**{"2__audio": "long.wav", "7__sampler": "ddpm", "7__steps": 400,
                                 "10__filename_prefix": "interrupt/x"})
    prompt_id = tiny.client.submit(workflow)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not tiny.client.queue()["queue_running"]:
        time.sleep(0.1)
    time.sleep(2.0)  # well inside sampling: 50 clips x 400 steps take minutes
    tiny.client.interrupt()
    stopped = time.monotonic()
    with pytest.raises(ComfyInterrupted) as info:
        tiny.client.wait(prompt_id, timeout=120)
    assert time.monotonic() - stopped < 10
    assert info.value.details.get("node_type") == "LetsTalkSampler"
    outputs = tiny.client.run(basic_workflow(**{"10__filename_prefix": "after_interrupt/x"}))
    assert probe(saved_videos(tiny, outputs)[0]).frame_count == 25


def test_long_audio_workflow_streams_into_a_saved_mp4(tiny):
    workflow = json.loads((REPO / "workflows" / "api" / "letstalk_long_audio_api.json").read_text())
    write_speechlike(tiny.input_dir / "three_clips.wav", 0.46)  # 12 frames = 3 clips of 4
    workflow["1"]["inputs"]["image"] = "face.png"
    workflow["2"]["inputs"]["audio"] = "three_clips.wav"
    workflow["3"]["inputs"]["checkpoint"] = "tiny.safetensors"
    workflow["7"]["inputs"].update(sampler="euler", steps=2)
    workflow["9"]["inputs"]["filename_prefix"] = "long/x"
    [video] = saved_videos(tiny, tiny.client.run(workflow))
    info = probe(video)
    assert info.frame_count == 12 and info.has_audio
    assert abs(info.audio_duration - 12 / 25) <= 1 / 25


def test_the_model_gives_its_own_audio_encoder_and_a_wrong_one_is_refused_by_name(tiny):
    # the model wired into Encode Audio: the encoder its checkpoint names (here mel, 80 bands)
    outputs = tiny.client.run(basic_workflow(**{"5__audio_encoder": ["3", 0], "10__filename_prefix": "own_enc/x"}))
    assert probe(saved_videos(tiny, outputs)[0]).frame_count == 25
    # a checkpoint trained on 16 features per frame, given the 80-band mel encoder
    make_tiny_bundle(tiny.models_dir / "letstalk" / "tiny16.safetensors", audio_features=16)
    with pytest.raises(ComfyExecutionError) as info:
        tiny.client.run(basic_workflow(**{"3__checkpoint": "tiny16.safetensors"}))
    assert info.value.node_type == "LetsTalkSampler"
    assert "gives 1 layers x 80 features per frame, but checkpoint" in info.value.exception_message
    assert "tiny16.safetensors expects 1 layers x 16 features" in info.value.exception_message


def test_a_video_too_long_to_keep_is_sampled_while_it_is_decoded(tmp_path):
    """With LETSTALK_KEEP_LATENTS_MB=0 every video counts as too long to keep: the sampler only prepares,
    the decoders sample clip by clip (progress and the per-clip lines come from them), both decoders
    make the whole video, and Cancel stops the sampling inside a decoder too."""
    import os
    import time

    from scripts.comfy_harness import ComfyInterrupted, ComfyServer

    with ComfyServer(tmp_path / "base", env={**os.environ, "LETSTALK_KEEP_LATENTS_MB": "0"}) as server:
        make_tiny_bundle(server.models_dir / "letstalk" / "tiny.safetensors")
        write_portrait(server.input_dir / "face.png")
        write_speechlike(server.input_dir / "talk.wav", 1.0)
        [video] = saved_videos(server, server.client.run(basic_workflow(**{"10__filename_prefix": "lazy/x"})))
        assert probe(video).frame_count == 25
        log = server.log()
        assert "too long to keep, so the clips are sampled while the video is decoded" in log
        assert "LetsTalk: clip 1/" in log
        streaming = json.loads((REPO / "workflows" / "api" / "letstalk_long_audio_api.json").read_text())
        streaming["1"]["inputs"]["image"] = "face.png"
        streaming["2"]["inputs"]["audio"] = "talk.wav"
        streaming["3"]["inputs"]["checkpoint"] = "tiny.safetensors"
        streaming["7"]["inputs"].update(sampler="euler", steps=2)
        streaming["9"]["inputs"]["filename_prefix"] = "lazy_stream/x"
        [video] = saved_videos(server, server.client.run(streaming))
        assert probe(video).frame_count == 25

        write_speechlike(server.input_dir / "long.wav", 8.0)
        before = len(server.log())
        prompt_id = server.client.submit(basic_workflow(**{"2__audio": "long.wav", "7__sampler": "ddim",
                                                            "7__steps": 100, "10__filename_prefix": "lazy_cancel/x"}))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "LetsTalk: clip 1/" not in server.log()[before:]:
            time.sleep(0.1)
        server.client.interrupt()
        with pytest.raises(ComfyInterrupted) as info:
            server.client.wait(prompt_id, timeout=120)
        assert info.value.details.get("node_type") == "LetsTalkDecodeVideo"


@pytest.mark.parametrize("latent_channels,works", [(4, True), (16, False)])
def test_native_vae_from_vae_loader(tiny, latent_channels, works):
    """A full-size SD-architecture VAE (random weights) through ComfyUI's own VAELoader."""
    from safetensors.torch import save_file

    from letstalk_core.latents import build_vae, load_shipped_config

    name = f"sd_like_c{latent_channels}.safetensors"
    config = dict(load_shipped_config("sd_vae"), latent_channels=latent_channels)
    codec = build_vae(config, seed=1)
    save_file({k: v.contiguous() for k, v in codec.vae.state_dict().items()}, tiny.models_dir / "vae" / name)
    del codec
    write_speechlike(tiny.input_dir / "short.wav", 0.2)  # 5 frames
    workflow = basic_workflow(**{"2__audio": "short.wav", "10__filename_prefix": f"vae{latent_channels}/x"})
    workflow["20"] = {"class_type": "VAELoader", "inputs": {"vae_name": name}}
    workflow["6"]["inputs"]["vae"] = ["20", 0]
    workflow["8"]["inputs"]["vae"] = ["20", 0]
    if works:
        assert probe(saved_videos(tiny, tiny.client.run(workflow))[0]).frame_count == 5
        # speech this short runs, and the log says what it makes
        assert "lasts only 0.20 s, so the video will be 5 frames long" in tiny.log()
    else:
        with pytest.raises(ComfyExecutionError) as info:
            tiny.client.run(workflow)
        assert info.value.node_type == "LetsTalkPortraitCondition"
        assert "vae" in info.value.exception_message and "16-channel" in info.value.exception_message
