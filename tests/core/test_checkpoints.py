"""Checkpoint import (the authors' .ckpt), the project's .safetensors format, conversion and errors."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import letstalk_core.checkpoints.native as native
from tests.helpers import OFFICIAL_FIXTURES as FIXTURES
from letstalk_core.checkpoints import (
    CheckpointError,
    LetsTalkCheckpoint,
    load_checkpoint,
    load_official_checkpoint,
    save_checkpoint,
)
from letstalk_core.model import AudioProjection, LetsTalkTransformer

REPO = Path(__file__).resolve().parents[2]
INDEX = json.loads((FIXTURES / "index.json").read_text())
VARIANTS = ["VDTcat", "VDTcatlong", "Litecatlong"]


def _heads(variant: str) -> int:
    return INDEX[variant]["model_kwargs"]["num_heads"]


def _io(variant: str) -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / f"{variant}_io.safetensors")


def _run(model, io):
    with torch.no_grad():
        return model(io["x"], io["t"], io["ref_latent"], io["audio_tokens"], io.get("motion"))


def _official_payload(variant: str) -> dict:
    return torch.load(FIXTURES / f"{variant}.ckpt", map_location="cpu", weights_only=True)


# ---- round trips ----------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_official_to_project_format_round_trip(variant, tmp_path):
    model, audio_proj, config = load_official_checkpoint(FIXTURES / f"{variant}.ckpt", num_heads=_heads(variant))
    io = _io(variant)
    expected = _run(model, io)
    path = save_checkpoint(tmp_path / "model.safetensors", model, audio_proj,
                           extra_metadata={"training": {"condition_dropout": {"audio": 0.0, "portrait": 0.0}}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]  # no temporary file left
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        keys = list(handle.keys())
    assert metadata["format"] == "letstalk" and metadata["format_version"] == "1"
    assert json.loads(metadata["transformer_config"]) == config
    assert metadata["frames_per_clip"] == str(config["frames_per_clip"])
    assert metadata["memory_frames"] == str(config["memory_frames"])
    assert all(key.startswith(("transformer.", "audio_proj.")) for key in keys)

    checkpoint = load_checkpoint(path)
    assert isinstance(checkpoint, LetsTalkCheckpoint) and checkpoint.source_format == "letstalk"
    assert checkpoint.config == config
    out = _run(checkpoint.model, io)
    assert torch.equal(out, expected)
    assert (out - io["out_ema"]).abs().max().item() < 1e-4
    with torch.no_grad():
        assert torch.equal(checkpoint.audio_proj(io["audio_window"]), audio_proj(io["audio_window"]))
    assert checkpoint.supports_guidance is False


def test_load_checkpoint_reads_the_official_format_too():
    checkpoint = load_checkpoint(FIXTURES / "Litecatlong.ckpt", num_heads=2, use_ema=False)
    assert checkpoint.source_format == "official"
    assert checkpoint.memory_frames == 2 and checkpoint.frames_per_clip == 4
    # the published code never drops a condition: recognisably no classifier-free guidance
    assert checkpoint.condition_dropout == {"audio": 0.0, "portrait": 0.0} and not checkpoint.supports_guidance
    io = _io("Litecatlong")
    assert (_run(checkpoint.model, io) - io["out_model"]).abs().max().item() < 1e-4


def test_memory_and_clip_length_overrides_must_fit_the_stored_table():
    _, _, config = load_official_checkpoint(FIXTURES / "VDTcatlong.ckpt", num_heads=4, frames_per_clip=5)
    assert (config["memory_frames"], config["frames_per_clip"]) == (1, 5)
    with pytest.raises(CheckpointError, match="long_temp_embed covers 6 frames"):
        load_official_checkpoint(FIXTURES / "VDTcatlong.ckpt", num_heads=4, memory_frames=3, frames_per_clip=4)


def test_bundle_parts_and_training_metadata_round_trip(tmp_path):
    model, audio_proj, _ = load_official_checkpoint(FIXTURES / "VDTcat.ckpt", num_heads=4)
    vae_weight = torch.randn(8, 4, 3, 3)  # [out, in, k, k]
    encoder_weight = torch.randn(16, 16)
    path = save_checkpoint(
        tmp_path / "bundle.safetensors", model, audio_proj,
        extra_tensors={"vae.decoder.conv_in.weight": vae_weight, "audio_encoder.layer.weight": encoder_weight},
        extra_metadata={"vae_config": {"latent_channels": 4, "scaling_factor": 0.18215},
                        "training": {"condition_dropout": {"audio": 0.1, "portrait": 0.05}, "steps": 10}},
    )
    checkpoint = load_checkpoint(path, dtype=torch.bfloat16)
    assert torch.equal(checkpoint.vae_state_dict["decoder.conv_in.weight"], vae_weight)
    assert torch.equal(checkpoint.audio_encoder_state_dict["layer.weight"], encoder_weight)
    assert checkpoint.vae_config == {"latent_channels": 4, "scaling_factor": 0.18215}
    assert checkpoint.audio_encoder_config is None
    assert checkpoint.supports_guidance and checkpoint.training["steps"] == 10
    assert {p.dtype for p in checkpoint.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in checkpoint.audio_proj.parameters()} == {torch.bfloat16}


def test_save_is_atomic_and_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    model, audio_proj, _ = load_official_checkpoint(FIXTURES / "VDTcat.ckpt", num_heads=4)
    path = save_checkpoint(tmp_path / "model.safetensors", model, audio_proj)
    before = path.read_bytes()

    def failing_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(native, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, audio_proj)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_save_refuses_bad_arguments(tmp_path):
    model, audio_proj, _ = load_official_checkpoint(FIXTURES / "VDTcat.ckpt", num_heads=4)
    with pytest.raises(ValueError, match=r"must end in \.safetensors"):
        save_checkpoint(tmp_path / "model.ckpt", model, audio_proj)
    with pytest.raises(ValueError, match="part prefix"):
        save_checkpoint(tmp_path / "m.safetensors", model, audio_proj, extra_tensors={"transformer.x": torch.zeros(1)})
    with pytest.raises(ValueError, match="cannot be overridden"):
        save_checkpoint(tmp_path / "m.safetensors", model, audio_proj, extra_metadata={"format": "other"})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # a fresh Python process imports torch and the pack
def test_convert_command_line(tmp_path):
    output = tmp_path / "converted.safetensors"
    result = subprocess.run(
        [sys.executable, "-m", "letstalk_core", "convert", str(FIXTURES / "VDTcatlong.ckpt"), str(output),
         "--num-heads", "4", "--no-ema"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert str(output) in result.stdout
    checkpoint = load_checkpoint(output)
    assert checkpoint.condition_dropout == {"audio": 0.0, "portrait": 0.0}
    io = _io("VDTcatlong")
    assert (_run(checkpoint.model, io) - io["out_model"]).abs().max().item() < 1e-4

    failed = subprocess.run(
        [sys.executable, "-m", "letstalk_core", "convert", str(FIXTURES / "VDTcatlong.ckpt"), str(tmp_path / "x.safetensors")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert failed.returncode == 2 and "--num-heads" in failed.stderr and "VDTcatlong.ckpt" in failed.stderr
    assert not (tmp_path / "x.safetensors").exists()


# ---- errors ---------------------------------------------------------------------------------------
class _CreatesMarker:
    """Unpickling this object would call open(marker, 'w'), i.e. create a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("writer", ["torch_zip", "raw_pickle"])
def test_code_executing_pickle_is_refused_without_running(writer, tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.ckpt"
    payload = {"model": {}, "ema": {}, "audioproj": _CreatesMarker(marker)}
    if writer == "torch_zip":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    assert not marker.exists()
    for loader in (load_official_checkpoint, load_checkpoint):
        with pytest.raises(CheckpointError, match="refused") as info:
            loader(path, num_heads=4)
        assert str(path) in str(info.value)
        assert not marker.exists()
    # the payload really is live: an unsafe load would have created the marker
    with open(path, "rb") as handle:
        if writer == "raw_pickle":
            pickle.load(handle)
            assert marker.exists()


def test_file_of_neither_format_is_refused(tmp_path):
    path = tmp_path / "notes.ckpt"
    path.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(CheckpointError, match="neither") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(2)}, str(foreign), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="without LetsTalk metadata") as info:
        load_checkpoint(foreign)
    assert str(foreign) in str(info.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_missing_key_is_named(tmp_path):
    payload = _official_payload("VDTcatlong")
    del payload["ema"]["blocks.1.cross_attn.v_proj.weight"]
    path = tmp_path / "missing_key.ckpt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"missing key 'blocks\.1\.cross_attn\.v_proj\.weight'") as info:
        load_official_checkpoint(path, num_heads=4)
    assert str(path) in str(info.value)


def test_wrong_shape_is_named_with_both_shapes(tmp_path):
    payload = _official_payload("Litecatlong")
    payload["ema"]["blocks.0.temporal_fc.weight"] = torch.zeros(64, 32)
    path = tmp_path / "wrong_shape.ckpt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as info:
        load_official_checkpoint(path, num_heads=2)
    message = str(info.value)
    assert str(path) in message and "'blocks.0.temporal_fc.weight'" in message
    assert "(64, 32)" in message and "(64, 64)" in message


def test_wrong_shape_in_project_format_is_named(tmp_path):
    model, audio_proj, _ = load_official_checkpoint(FIXTURES / "VDTcat.ckpt", num_heads=4)
    path = save_checkpoint(tmp_path / "model.safetensors", model, audio_proj)
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(path)
    tensors["transformer.final_proj.weight"] = torch.zeros(16, 64)
    del tensors["audio_proj.norm.bias"]
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match=r"'transformer\.final_proj\.weight' has shape \(16, 64\).*\(32, 64\)"):
        load_checkpoint(path)
    tensors["transformer.final_proj.weight"] = torch.zeros(32, 64)
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match=r"missing key 'audio_proj\.norm\.bias'"):
        load_checkpoint(path)


def test_missing_ema_is_reported(tmp_path):
    payload = _official_payload("VDTcat")
    del payload["ema"]
    path = tmp_path / "no_ema.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="no EMA weights.*use_ema=False") as info:
        load_official_checkpoint(path, num_heads=4)
    assert str(path) in str(info.value)
    model, _, _ = load_official_checkpoint(path, num_heads=4, use_ema=False)
    io = _io("VDTcat")
    assert (_run(model, io) - io["out_model"]).abs().max().item() < 1e-4


def test_unknown_width_needs_num_heads():
    with pytest.raises(CheckpointError, match="hidden width 64 is not an official size.*num_heads"):
        load_official_checkpoint(FIXTURES / "VDTcat.ckpt")


def test_changed_position_table_is_refused(tmp_path):
    payload = _official_payload("VDTcat")
    payload["ema"]["pos_embed"] = payload["ema"]["pos_embed"] * 1.5
    path = tmp_path / "changed_table.pth"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="pos_embed differs from the fixed sin-cos table"):
        load_official_checkpoint(path, num_heads=4)


def test_official_import_builds_plain_modules():
    model, audio_proj, _ = load_official_checkpoint(FIXTURES / "VDTcat.ckpt", num_heads=4)
    assert isinstance(model, LetsTalkTransformer) and isinstance(audio_proj, AudioProjection)
    assert not model.training and all(p.device.type == "cpu" for p in model.parameters())
    # none of the authors' module names survive the import
    names = set(model.state_dict()) | set(audio_proj.state_dict())
    assert not any(word in name for name in names for word in ("cross_attn", "adaLN", "x_embedder", "proj1", "mlp."))


def test_state_dicts_saved_from_a_ddp_wrapper_load(tmp_path):
    payload = _official_payload("Litecatlong")
    payload["ema"] = {f"module.{key}": tensor for key, tensor in payload["ema"].items()}
    path = tmp_path / "ddp.ckpt"
    torch.save(payload, path)
    model, _, _ = load_official_checkpoint(path, num_heads=2)
    io = _io("Litecatlong")
    assert (_run(model, io) - io["out_ema"]).abs().max().item() < 1e-4


def test_heads_that_do_not_divide_the_width_name_the_file():
    with pytest.raises(CheckpointError, match=r"VDTcat\.ckpt.*not divisible by num_heads=5"):
        load_official_checkpoint(FIXTURES / "VDTcat.ckpt", num_heads=5)


def test_safetensors_whose_header_length_starts_with_0x80_is_not_taken_for_a_pickle(tmp_path):
    from safetensors.torch import load_file as read_tensors

    from letstalk_core.checkpoints import load_checkpoint as load_any, save_checkpoint as save_native
    from letstalk_core.model import AudioProjection, LetsTalkTransformer

    model = LetsTalkTransformer(variant="vdt", in_channels=4, patch_size=2, hidden_size=32, depth=1, num_heads=2,
                                audio_dim=16, sample_size=8, frames_per_clip=4, memory_frames=0)
    projection = AudioProjection(window_size=5, input_features=80, num_layers=1, feature_dim=80,
                                 intermediate_dim=16, num_tokens=2, output_dim=16)
    for padding in range(0, 256):  # metadata of growing length until the header length's low byte is 0x80
        path = save_native(tmp_path / "x.safetensors", model, projection, extra_metadata={"note": "n" * padding})
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail("no header length ending in 0x80 was produced")
    loaded = load_any(path)
    assert loaded.source_format == "letstalk"
    assert set(read_tensors(path)) >= {f"transformer.{k}" for k in model.state_dict()}
