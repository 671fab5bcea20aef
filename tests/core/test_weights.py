"""One reader of weight files (letstalk_core.weights): what it reads, what it refuses, and that the VAE,
audio encoder, TAEF2, checkpoint and training-state readers all go through it."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

from letstalk_core.audio import load_audio_encoder
from letstalk_core.checkpoints import CheckpointError, load_checkpoint
from letstalk_core.latents import load_vae
from letstalk_core.training.trainer import load_training_state
from letstalk_core.weights import WeightFileError, read_torch_file, read_weights

MARKER = "this pickle must never run"


class RunsCode:
    def __reduce__(self):
        return (print, (MARKER,))


def test_reads_safetensors_with_metadata_and_torch_files_with_or_without_a_state_dict_wrapper(tmp_path):
    tensors = {"a.weight": torch.arange(6.0).view(2, 3), "b.bias": torch.ones(2)}
    save_file(tensors, str(tmp_path / "w.safetensors"), metadata={"format": "x"})
    state, metadata = read_weights(tmp_path / "w.safetensors")
    assert metadata == {"format": "x"} and all(torch.equal(state[k], tensors[k]) for k in tensors)
    torch.save(tensors, tmp_path / "w.pt")
    torch.save({"state_dict": tensors, "epoch": 3}, tmp_path / "lightning.ckpt")
    for name in ("w.pt", "lightning.ckpt"):
        state, metadata = read_weights(tmp_path / name)
        assert metadata == {} and sorted(state) == sorted(tensors), name
    assert read_torch_file(tmp_path / "lightning.ckpt")["epoch"] == 3  # the nested reader keeps everything


def test_refuses_bad_files_naming_them(tmp_path, capsys):
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"w": RunsCode()}))
    with pytest.raises(WeightFileError, match=r"weight file '.*evil\.pt': refused to load: .*could run code"):
        read_weights(evil)
    (tmp_path / "damaged.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(WeightFileError, match=r"'.*damaged\.safetensors' is not a readable safetensors file"):
        read_weights(tmp_path / "damaged.safetensors")
    (tmp_path / "truncated.pt").write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(WeightFileError, match=r"'.*truncated\.pt' is not a readable torch file"):
        read_weights(tmp_path / "truncated.pt")
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(WeightFileError, match=r"unsupported file type '\.onnx'; accepted: \.safetensors, \.ckpt"):
        read_weights(tmp_path / "model.onnx")
    torch.save({"w": torch.ones(1), "step": 5}, tmp_path / "mixed.pt")
    with pytest.raises(WeightFileError, match=r"not a flat state dict of tensors: 1 entries"):
        read_weights(tmp_path / "mixed.pt")
    torch.save([torch.ones(1)], tmp_path / "list.pt")
    with pytest.raises(WeightFileError, match="holds a list, not a state dict"):
        read_weights(tmp_path / "list.pt")
    with pytest.raises(FileNotFoundError, match=r"VAE file '.*nowhere\.pt' does not exist"):
        read_weights(tmp_path / "nowhere.pt", "VAE file")
    with pytest.raises(WeightFileError, match="is a folder"):
        read_weights(tmp_path)
    assert MARKER not in capsys.readouterr().out


def test_every_reader_of_the_package_refuses_a_pickle_that_runs_code(tmp_path, capsys):
    evil = {"w": RunsCode()}
    for name in ("vae.pt", "checkpoint.ckpt", "training_state.pt", "encoder.bin"):
        (tmp_path / name).write_bytes(pickle.dumps(evil))
    with pytest.raises(WeightFileError, match=r"VAE file .*refused to load"):
        load_vae(tmp_path / "vae.pt")
    with pytest.raises(CheckpointError, match=r"checkpoint .*refused to load"):
        load_checkpoint(tmp_path / "checkpoint.ckpt")
    with pytest.raises(WeightFileError, match=r"training state .*refused to load"):
        load_training_state(tmp_path / "training_state.pt")
    folder = tmp_path / "encoder"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "wav2vec2"}')
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(evil))
    with pytest.raises(WeightFileError, match=r"audio encoder file .*refused to load"):
        load_audio_encoder(folder)
    assert MARKER not in capsys.readouterr().out
