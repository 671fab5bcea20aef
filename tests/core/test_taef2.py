"""TAEF2 as a codec: the committed weights on a real face, every way to load them, and their errors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from diffusers import AutoencoderTiny
from PIL import Image

from letstalk_core.latents import LatentCodec, build_vae, load_shipped_config, load_vae, save_vae, vae_bundle_entries
from letstalk_core.latents.taef2 import TAEF2_FILES, read_taef2_files
from tests.helpers import REPO

TAEF2_DIR = REPO / "models" / "taef2"
REAL_FACE = REPO / "tests" / "fixtures" / "grid_s1_face_128.png"


@pytest.fixture(scope="module")
def taef2():
    return load_vae(TAEF2_DIR)


@pytest.fixture(scope="module")
def real_face():
    pixels = torch.from_numpy(np.array(Image.open(REAL_FACE).convert("RGB"))).permute(2, 0, 1).float()
    return (pixels / 127.5 - 1.0).unsqueeze(0)  # [1, 3, 128, 128] in -1..1


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2).pow(2).mean()
    return float(10 * torch.log10(1.0 / mse))


def test_round_trip_of_a_real_face_at_128_px(taef2, real_face):
    assert taef2.kind == "taef2" and taef2.latent_channels == 32 and taef2.downscale_factor == 8
    latents = taef2.encode(real_face)
    assert latents.shape == (1, 32, 16, 16)
    value = psnr(taef2.decode(latents), real_face)
    assert value >= 28.0, f"TAEF2 round trip of a real face at 128 px: {value:.1f} dB"
    # a random network of the same shape reconstructs nothing: the weights, not the layout, make the number
    random = build_vae(load_shipped_config("taef2"), seed=0)
    assert psnr(random.decode(random.encode(real_face)), real_face) < 15.0


def test_taef2_latents_are_near_unit_scale(taef2, real_face):
    """Scaling factor 1 is right for real faces: the diffusion transformer sees about unit-variance latents."""
    latents = taef2.encode(real_face)
    assert 0.7 < float(latents.std()) < 1.4
    assert abs(float(latents.mean())) < 0.2


def test_video_batches_and_chunks(taef2, real_face):
    video = real_face.expand(2, 3, -1, -1, -1).contiguous()  # [B=2, F=3, 3, 128, 128]
    latents = taef2.encode(video, chunk_size=2)
    assert latents.shape == (2, 3, 32, 16, 16)
    frames = list(taef2.iter_decode(latents, chunk_size=4))
    assert [f.shape[0] for f in frames] == [4, 2]
    assert torch.allclose(torch.cat(frames)[0], taef2.decode(latents[0, :1])[0], atol=1e-5)


def test_either_file_or_the_folder_loads_the_same_network(taef2, real_face, tmp_path):
    expected = taef2.decode(taef2.encode(real_face))
    for path in (TAEF2_DIR / TAEF2_FILES[0], TAEF2_DIR / TAEF2_FILES[1]):
        codec = load_vae(path)
        assert torch.equal(codec.decode(codec.encode(real_face)), expected)
    # the project's single file, a diffusers folder and a bundle's entries keep the pooled blocks
    single = save_vae(taef2, tmp_path / "taef2.safetensors")
    folder = save_vae(taef2, tmp_path / "taef2_folder")
    tensors, metadata = vae_bundle_entries(taef2)
    for codec in (load_vae(single), load_vae(folder), load_vae(tensors, metadata=metadata)):
        assert codec.kind == "taef2"
        assert torch.equal(codec.decode(codec.encode(real_face)), expected)


def test_taef2_errors(tmp_path):
    half = tmp_path / "half"
    half.mkdir()
    (half / TAEF2_FILES[0]).write_bytes((TAEF2_DIR / TAEF2_FILES[0]).read_bytes())
    with pytest.raises(FileNotFoundError, match=r"needs both taef2_encoder.pth and taef2_decoder.pth .*missing: taef2_decoder.pth"):
        load_vae(half)
    with pytest.raises(FileNotFoundError, match="missing: taef2_decoder.pth"):
        load_vae(half / TAEF2_FILES[0])

    class RunsCode:
        def __reduce__(self):
            return (print, ("this must never run",))

    evil = tmp_path / "evil"
    evil.mkdir()
    for name in TAEF2_FILES:
        (evil / name).write_bytes(pickle.dumps({"0.weight": RunsCode()}))
    with pytest.raises(ValueError, match=r"TAEF2 encoder .*taef2_encoder.pth.: refused to load: .*could run code"):
        load_vae(evil)

    wrong = tmp_path / "wrong"
    wrong.mkdir()
    torch.save({"encoder.conv_in.weight": torch.zeros(1)}, wrong / TAEF2_FILES[0])
    torch.save({"0.weight": torch.zeros(1)}, wrong / TAEF2_FILES[1])
    with pytest.raises(ValueError, match=r"'encoder.conv_in.weight' is not a key of a TAEF2 encoder"):
        load_vae(wrong)

    state = read_taef2_files(*(TAEF2_DIR / name for name in TAEF2_FILES))
    del state["encoder.layers.13.pool.0.weight"]
    with pytest.raises(ValueError, match=r"1 missing keys .*encoder.layers.13.pool.0.weight"):
        load_vae(state)
    with pytest.raises(ValueError, match="kind='sd_vae' was asked for but the weights are an AutoencoderTiny"):
        load_vae(TAEF2_DIR, kind="sd_vae")
    plain = AutoencoderTiny(latent_channels=4)  # TAESD's layout, without TAEF2's pooled blocks
    with pytest.raises(ValueError, match="TAEF2 .* is an AutoencoderTiny with pooled innermost blocks"):
        LatentCodec(plain, "taef2")
    with pytest.raises(ValueError, match=r"encodes to 32 channels but the model checkpoint expects 4"):
        load_vae(TAEF2_DIR, expected_latent_channels=4)
