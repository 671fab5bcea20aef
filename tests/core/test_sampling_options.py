"""One set of sampling options: checked once, defaults the checkpoint recommends, the same by every route."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
import torch
from safetensors import safe_open

from letstalk_core.checkpoints import convert_checkpoint, load_checkpoint
from letstalk_core.pipeline import LetsTalkPipeline, sampling_options
from letstalk_core.sampling.options import (AUTHORS_LOOP, DEFAULT_STEPS, PROJECT_DEFAULT, SamplingOptions,
                                            recommended_options)
from tests.helpers import OFFICIAL_FIXTURES, make_tiny_bundle, write_portrait, write_speechlike

GUIDED = {"audio": 0.1, "portrait": 0.1}


def _metadata(path) -> dict:
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata()


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("options")
    plain = make_tiny_bundle(root / "plain.safetensors", condition_dropout=GUIDED)
    recommended = convert_checkpoint(plain, root / "recommended.safetensors",
                                     sampling={"sampler": "ddim", "steps": 3, "audio_cfg": 2.0, "overlap_frames": 1})
    return {"root": root, "plain": plain, "recommended": recommended,
            "portrait": write_portrait(root / "portrait.png"), "speech": write_speechlike(root / "speech.wav", 0.6)}


def test_options_check_every_value_by_name():
    for given, message in [({"sampler": "plms"}, "sampler 'plms' is not known; accepted: ddpm, ddim"),
                           ({"steps": 0}, "steps must be an integer >= 1"),
                           ({"steps": 2.5}, "steps must be an integer"),
                           ({"seed": "one"}, "seed must be an integer"),
                           ({"audio_cfg": -0.5}, "audio_cfg must be a finite number >= 0"),
                           ({"portrait_cfg": float("inf")}, "portrait_cfg must be a finite number >= 0"),
                           ({"overlap_frames": -1}, "overlap_frames must be an integer from 0"),
                           ({"fps": 0}, "fps must be a number from 1 to 120")]:
        with pytest.raises(ValueError, match=message):
            SamplingOptions(**given)
    with pytest.raises(TypeError, match="unknown sampling options: cfg"):
        PROJECT_DEFAULT.replace(cfg=3)


def test_replace_keeps_what_is_none_and_another_sampler_brings_its_own_steps():
    base = SamplingOptions(sampler="dpmpp_2m", steps=10, audio_cfg=3.0, overlap_frames=4)
    assert base.replace(sampler=None, steps=None, audio_cfg=None) == base
    assert base.replace(sampler="ddpm").steps == DEFAULT_STEPS["ddpm"]
    assert base.replace(sampler="ddpm", steps=7).steps == 7
    assert base.replace(sampler="dpmpp_2m").steps == 10  # the same sampler keeps its recommended steps
    assert base.replace(fps=29.97).fps == Fraction(2997, 100)


def test_the_checkpoint_recommends_what_its_file_says(bundles):
    plain, recommended = load_checkpoint(bundles["plain"]), load_checkpoint(bundles["recommended"])
    assert recommended_options(plain) == PROJECT_DEFAULT  # a project file that does not say: the project default
    options = recommended_options(recommended)
    assert (options.sampler, options.steps, options.audio_cfg, options.portrait_cfg, options.overlap_frames) == \
        ("ddim", 3, 2.0, 1.0, 1)
    # converting again keeps the recommendation unless told otherwise
    again = convert_checkpoint(bundles["recommended"], bundles["root"] / "again.safetensors", sampling={"steps": 5})
    assert json.loads(_metadata(again)["sampling"]) == {"sampler": "ddim", "steps": 5, "audio_cfg": 2.0,
                                                        "portrait_cfg": 1.0, "overlap_frames": 1}


def test_the_authors_checkpoints_get_the_authors_loop(tmp_path):
    official = load_checkpoint(OFFICIAL_FIXTURES / "VDTcatlong.ckpt", num_heads=4)
    assert official.source_format == "official"
    assert recommended_options(official) == AUTHORS_LOOP.replace(fps=25)
    converted = load_checkpoint(convert_checkpoint(OFFICIAL_FIXTURES / "VDTcatlong.ckpt",
                                                   tmp_path / "official.safetensors", num_heads=4))
    assert recommended_options(converted) == recommended_options(official)  # still the authors' loop


def test_a_recommendation_the_checkpoint_cannot_run_is_refused(bundles, tmp_path):
    unguided = make_tiny_bundle(tmp_path / "unguided.safetensors")
    with pytest.raises(ValueError, match="trained without condition dropout"):
        convert_checkpoint(unguided, tmp_path / "x.safetensors", sampling={"audio_cfg": 3.0})
    with pytest.raises(ValueError, match="overlap_frames must be an integer from 0 to frames_per_clip - 1 = 3"):
        convert_checkpoint(bundles["plain"], tmp_path / "y.safetensors", sampling={"overlap_frames": 4})
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "y.safetensors").exists()


def test_a_broken_stored_recommendation_is_named(bundles):
    checkpoint = load_checkpoint(bundles["recommended"])
    checkpoint.metadata["sampling"] = json.dumps({"sampler": "ddim", "steps": 3})
    with pytest.raises(ValueError, match="recommended.safetensors.*missing audio_cfg, portrait_cfg, overlap_frames"):
        recommended_options(checkpoint)
    checkpoint.metadata["sampling"] = "{not json"
    with pytest.raises(ValueError, match="metadata 'sampling' is not valid JSON"):
        recommended_options(checkpoint)


def test_defaults_make_the_same_video_as_the_recommendation_spelled_out(bundles):
    pipe = LetsTalkPipeline.from_pretrained(bundles["recommended"])
    by_default = pipe(bundles["portrait"], bundles["speech"])
    spelled_out = pipe(bundles["portrait"], bundles["speech"], sampler="ddim", steps=3, audio_cfg=2.0,
                       portrait_cfg=1.0, overlap_frames=1, seed=0)
    other = pipe(bundles["portrait"], bundles["speech"], audio_cfg=1.0)
    assert torch.equal(by_default, spelled_out)
    assert not torch.equal(by_default, other)
    options = sampling_options(pipe.checkpoint)
    assert options == pipe.options() and options.fps == 25
