"""Latent codecs: loading every supported VAE layout, encode/decode, chunking, and their errors."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from diffusers import AutoencoderDC, AutoencoderKL
from safetensors.torch import save_file

from letstalk_core.latents import (
    LatentCodec,
    build_vae,
    check_latent_channels,
    config_downscale_factor,
    detect_vae_layout,
    images_from_comfy,
    images_to_comfy,
    load_shipped_config,
    load_vae,
    save_vae,
    vae_bundle_entries,
)

TINY_KL = dict(
    block_out_channels=(32, 32),
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=32,
)
TINY_DC = dict(
    latent_channels=8,
    attention_head_dim=8,
    encoder_block_types=("ResBlock", "EfficientViTBlock"),
    decoder_block_types=("ResBlock", "EfficientViTBlock"),
    encoder_block_out_channels=(8, 16),
    decoder_block_out_channels=(8, 16),
    encoder_layers_per_block=(1, 1),
    decoder_layers_per_block=(1, 1),
    encoder_qkv_multiscales=((), (5,)),
    decoder_qkv_multiscales=((), (5,)),
    downsample_block_type="conv",
    upsample_block_type="interpolate",
    decoder_norm_types="rms_norm",
    decoder_act_fns="silu",
    scaling_factor=0.41407,
)


def _tiny_kl(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(**TINY_KL).eval()


def _tiny_dc(seed: int = 0) -> AutoencoderDC:
    torch.manual_seed(seed)
    return AutoencoderDC(**TINY_DC).eval()


def _images(n: int, size: int = 32, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1  # [N, 3, H, W]


# Diffusers -> original LDM/CompVis key names, written independently of the loader under test.
def _to_ldm(state: dict, n_levels: int) -> dict:
    out = {}
    for key, value in state.items():
        new = key
        m = re.match(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)$", new)
        if m:
            new = f"encoder.down.{m[1]}.block.{m[2]}.{m[3]}"
        m = re.match(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)$", new)
        if m:
            new = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        m = re.match(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)$", new)
        if m:
            new = f"decoder.up.{n_levels - 1 - int(m[1])}.block.{m[2]}.{m[3]}"
        m = re.match(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)$", new)
        if m:
            new = f"decoder.up.{n_levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
        m = re.match(r"^(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)$", new)
        if m:
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
        m = re.match(r"^(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.*)$", new)
        if m:
            short = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}[m[2]]
            new = f"{m[1]}.mid.attn_1.{short}.{m[3]}"
            if short != "norm" and m[3] == "weight":
                value = value[:, :, None, None]  # LDM keeps attention projections as 1x1 convs
        new = new.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
        out[new] = value.clone()
    return out


# Diffusers -> original MIT-HAN-lab DC-AE key names for the tiny config above (independent of the loader).
def _to_original_dc(state: dict) -> dict:
    out = {}
    qkv_parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        m = re.match(r"^(encoder|decoder)\.(down_blocks|up_blocks)\.(\d+)\.(\d+)\.(.*)$", key)
        if key == "encoder.conv_in.weight" or key == "encoder.conv_in.bias":
            out[key.replace("conv_in", "project_in.conv")] = value
        elif key.startswith("encoder.conv_out."):
            out[key.replace("conv_out", "project_out.0.conv")] = value
        elif key.startswith("decoder.conv_in."):
            out[key.replace("conv_in", "project_in.main.conv")] = value
        elif key.startswith("decoder.norm_out."):
            out[key.replace("norm_out", "project_out.0")] = value
        elif key.startswith("decoder.conv_out."):
            out[key.replace("conv_out", "project_out.2.conv")] = value
        elif m:
            side, stage, op, rest = m[1], m[3], m[4], m[5]
            prefix = f"{side}.stages.{stage}.op_list.{op}"
            a = re.match(r"^attn\.to_(q|k|v)\.weight$", rest)
            if a:
                qkv_parts.setdefault(prefix, {})[a[1]] = value
                continue
            rules = [
                (r"^conv1\.(.*)$", r"main.conv1.conv.\1"),
                (r"^conv2\.(.*)$", r"main.conv2.conv.\1"),
                (r"^norm\.(.*)$", r"main.conv2.norm.\1"),
                (r"^conv\.(.*)$", r"main.conv.conv.\1"),
                (r"^attn\.to_qkv_multiscale\.0\.proj_in\.(.*)$", r"context_module.main.aggreg.0.0.\1"),
                (r"^attn\.to_qkv_multiscale\.0\.proj_out\.(.*)$", r"context_module.main.aggreg.0.1.\1"),
                (r"^attn\.norm_out\.(.*)$", r"context_module.main.proj.norm.\1"),
                (r"^conv_out\.conv_inverted\.(.*)$", r"local_module.main.inverted_conv.conv.\1"),
                (r"^conv_out\.conv_depth\.(.*)$", r"local_module.main.depth_conv.conv.\1"),
                (r"^conv_out\.conv_point\.(.*)$", r"local_module.main.point_conv.conv.\1"),
                (r"^conv_out\.norm\.(.*)$", r"local_module.main.point_conv.norm.\1"),
            ]
            if rest == "attn.to_out.weight":
                out[f"{prefix}.context_module.main.proj.conv.weight"] = value[:, :, None, None]
                continue
            for pattern, repl in rules:
                if re.match(pattern, rest):
                    out[f"{prefix}.{re.sub(pattern, repl, rest)}"] = value
                    break
            else:
                raise AssertionError(f"test mapping misses {key}")
        else:
            raise AssertionError(f"test mapping misses {key}")
    for prefix, parts in qkv_parts.items():
        qkv = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)[:, :, None, None]  # [3C, C, 1, 1]
        out[f"{prefix}.context_module.main.qkv.conv.weight"] = qkv
    return {k: v.clone().contiguous() for k, v in out.items()}


def _assert_same_vae(codec: LatentCodec, reference, images: torch.Tensor) -> None:
    """Encode and decode through the codec and through the raw diffusers model: exactly equal."""
    with torch.no_grad():
        if isinstance(reference, AutoencoderDC):
            raw = reference.encode(images).latent
        else:
            raw = reference.encode(images).latent_dist.mode()
    latents = codec.encode(images, chunk_size=len(images))
    torch.testing.assert_close(latents, (raw - codec.shift_factor) * codec.scaling_factor, rtol=0, atol=0)
    with torch.no_grad():
        expected_images = reference.decode(latents / codec.scaling_factor + codec.shift_factor).sample
    decoded = codec.decode(latents, chunk_size=len(images))
    torch.testing.assert_close(decoded, expected_images, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- configs
def test_shipped_configs_describe_the_published_vaes():
    expected = {
        # kind: (class, latent channels, downscale, scale, parameter count of the published weights)
        "sd_vae": (AutoencoderKL, 4, 8, 0.18215, 83_653_863),
        "dc_ae": (AutoencoderDC, 32, 32, 0.41407, 312_250_275),
    }
    for kind, (cls, channels, factor, scale, n_params) in expected.items():
        cfg = load_shipped_config(kind)
        with torch.device("meta"):
            vae = cls.from_config({k: v for k, v in cfg.items() if not k.startswith("_")})
        codec = LatentCodec(vae, kind)
        assert codec.latent_channels == channels
        assert codec.downscale_factor == factor
        assert codec.scaling_factor == pytest.approx(scale)
        assert sum(p.numel() for p in vae.parameters()) == n_params
    demo = build_vae(load_shipped_config("demo_vae"), seed=0)
    assert (demo.kind, demo.latent_channels, demo.downscale_factor) == ("demo_vae", 4, 8)
    assert sum(p.numel() for p in demo.parameters()) < 2_000_000
    demo_f4 = build_vae(load_shipped_config("demo_vae_f4"), seed=0)
    assert (demo_f4.kind, demo_f4.latent_channels, demo_f4.downscale_factor) == ("demo_vae", 4, 4)
    assert demo_f4.encode(torch.zeros(1, 3, 64, 64)).shape == (1, 4, 16, 16)
    assert config_downscale_factor(load_shipped_config("dc_ae")) == 32


# ---------------------------------------------------------------------------------------------- encode/decode
def test_encode_decode_shapes_scale_and_video_batches():
    vae = _tiny_kl()
    codec = LatentCodec(vae, "demo_vae")
    images = _images(3)
    latents = codec.encode(images)
    assert latents.shape == (3, 4, 16, 16) and latents.dtype == torch.float32
    with torch.no_grad():
        raw = vae.encode(images).latent_dist.mode()
    torch.testing.assert_close(latents, raw * 0.18215, rtol=0, atol=0)
    video = images.reshape(1, 3, 3, 32, 32)  # [B, F, 3, H, W]
    video_latents = codec.encode(video)
    assert video_latents.shape == (1, 3, 4, 16, 16)
    torch.testing.assert_close(video_latents[0], latents, rtol=0, atol=1e-5)
    frames = codec.decode(video_latents)
    assert frames.shape == (1, 3, 3, 32, 32)
    # sampling draws from the posterior: differs from the mean, reproducible with a generator
    s1 = codec.encode(images, sample=True, generator=torch.Generator().manual_seed(0))
    s2 = codec.encode(images, sample=True, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(s1, s2, rtol=0, atol=0)
    assert (s1 - latents).abs().max() > 1e-3
    # a shift factor is removed before scaling and restored before decoding
    shifted = LatentCodec(vae, "demo_vae", scaling_factor=0.5, shift_factor=0.1)
    torch.testing.assert_close(shifted.encode(images), (raw - 0.1) * 0.5, rtol=0, atol=1e-6)
    with torch.no_grad():
        expected = vae.decode(latents / 0.18215).sample
    torch.testing.assert_close(shifted.decode((latents / 0.18215 - 0.1) * 0.5), expected, rtol=0, atol=1e-5)


def test_chunked_decode_matches_one_shot_and_iterates_in_bounded_chunks():
    codec = LatentCodec(_tiny_kl(), "demo_vae")
    latents = torch.randn(7, 4, 8, 8, generator=torch.Generator().manual_seed(3))  # [N, C, h, w]
    whole = codec.decode(latents, chunk_size=7)
    chunked = codec.decode(latents, chunk_size=3)
    # batch size may change the CPU conv kernels, so equal up to float rounding
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-4)
    pieces = list(codec.iter_decode(latents, chunk_size=3))
    assert [p.shape[0] for p in pieces] == [3, 3, 1]
    torch.testing.assert_close(torch.cat(pieces), chunked, rtol=0, atol=0)
    images = _images(5, 16)
    torch.testing.assert_close(codec.encode(images, chunk_size=2), codec.encode(images, chunk_size=5), rtol=0, atol=1e-4)


def test_comfy_image_conversion_round_trip():
    comfy = torch.rand(2, 12, 20, 3)  # [N, H, W, 3]
    images = images_from_comfy(comfy)
    assert images.shape == (2, 3, 12, 20)
    assert images.min() >= -1 and images.max() <= 1
    torch.testing.assert_close(images_to_comfy(images), comfy, rtol=0, atol=1e-6)
    assert images_to_comfy(torch.full((1, 2, 3, 4, 4), 3.0)).max() == 1.0  # clamped, [B, F] flattened
    assert images_to_comfy(torch.zeros(1, 2, 3, 4, 4)).shape == (2, 4, 4, 3)
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        images_from_comfy(torch.rand(1, 8, 8, 4))
    with pytest.raises(ValueError, match="float"):
        images_from_comfy(torch.zeros(1, 8, 8, 3, dtype=torch.uint8))


# ---------------------------------------------------------------------------------------------- loading
def test_ldm_layout_single_file_loads_exactly(tmp_path):
    vae = _tiny_kl()
    ldm = _to_ldm(vae.state_dict(), n_levels=2)
    assert detect_vae_layout(ldm.keys()) == "ldm_kl"
    path = tmp_path / "vae-ldm.safetensors"
    save_file(ldm, str(path))
    codec = load_vae(path)
    assert codec.kind == "demo_vae" and codec.scaling_factor == pytest.approx(0.18215)
    assert list(codec.vae.config.block_out_channels) == [32, 32]
    _assert_same_vae(codec, vae, _images(2))

    # the same weights inside a full LDM checkpoint (first_stage_model. prefix, other tensors, .ckpt)
    full = {f"first_stage_model.{k}": v for k, v in ldm.items()}
    full["model.diffusion_model.dummy.weight"] = torch.zeros(2)
    ckpt = tmp_path / "full.ckpt"
    torch.save({"state_dict": full}, ckpt)
    _assert_same_vae(load_vae(ckpt), vae, _images(2))


def test_diffusers_single_file_folder_and_project_formats(tmp_path):
    vae = _tiny_kl(seed=5)
    images = _images(2)
    # diffusers key layout, no config anywhere: structure is read from the shapes
    plain = tmp_path / "vae-diffusers.safetensors"
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(plain))
    _assert_same_vae(load_vae(plain), vae, images)
    # a diffusers folder, and a pipeline folder with a vae/ subfolder
    vae.save_pretrained(str(tmp_path / "pipe" / "vae"))
    _assert_same_vae(load_vae(tmp_path / "pipe" / "vae"), vae, images)
    _assert_same_vae(load_vae(tmp_path / "pipe"), vae, images)
    # an in-memory state dict
    _assert_same_vae(load_vae(vae.state_dict()), vae, images)

    # the demo VAE through the project's single file (config in metadata) and folder
    demo = build_vae(load_shipped_config("demo_vae"), seed=2)
    demo.scaling_factor, demo.shift_factor = 0.9, 0.05
    demo_images = _images(2, 64)
    for target in (tmp_path / "demo.safetensors", tmp_path / "demo_folder"):
        save_vae(demo, target)
        loaded = load_vae(target)
        assert loaded.kind == "demo_vae" and loaded.scaling_factor == pytest.approx(0.9)
        assert loaded.shift_factor == pytest.approx(0.05)
        _assert_same_vae(loaded, demo.vae, demo_images)

    # a project bundle: "vae."-prefixed tensors next to other tensors, config in metadata "vae_config"
    tensors, meta = vae_bundle_entries(demo)
    assert all(k.startswith("vae.") for k in tensors) and json.loads(meta["vae_config"])["_class_name"] == "AutoencoderKL"
    bundle = tmp_path / "bundle.safetensors"
    save_file({**tensors, "model.x_embedder.proj.weight": torch.ones(8, 4, 1, 1)}, str(bundle), metadata={**meta, "format": "pt"})
    _assert_same_vae(load_vae(bundle), demo.vae, demo_images)


def test_dc_ae_layouts_load_exactly(tmp_path):
    dc = _tiny_dc()
    images = _images(2, 32)
    cfg = {"_class_name": "AutoencoderDC", **TINY_DC}
    # diffusers folder
    dc.save_pretrained(str(tmp_path / "dc"))
    codec = load_vae(tmp_path / "dc")
    assert (codec.kind, codec.latent_channels, codec.downscale_factor) == ("dc_ae", 8, 2)
    assert codec.scaling_factor == pytest.approx(0.41407)
    _assert_same_vae(codec, dc, images)
    # diffusers-layout single file with an explicit config
    single = tmp_path / "dc.safetensors"
    save_file({k: v.contiguous() for k, v in dc.state_dict().items()}, str(single))
    assert detect_vae_layout(dc.state_dict().keys()) == "diffusers_dc_ae"
    _assert_same_vae(load_vae(single, config=cfg), dc, images)
    # original MIT-HAN-lab layout, converted by diffusers' own converter
    original = _to_original_dc(dc.state_dict())
    assert detect_vae_layout(original.keys()) == "original_dc_ae"
    orig_path = tmp_path / "dc-original.safetensors"
    save_file(original, str(orig_path))
    config_path = tmp_path / "dc_config.json"
    config_path.write_text(json.dumps(cfg))
    _assert_same_vae(load_vae(orig_path, config=config_path), dc, images)
    # with the shipped f32c32 config the tiny weights do not fit: a clear error, not a silent load
    with pytest.raises(ValueError, match="missing keys|wrong shape"):
        load_vae(single)


def test_codec_to_dtype_and_device():
    codec = LatentCodec(_tiny_kl(), "demo_vae")
    codec.to(dtype=torch.bfloat16)
    assert codec.dtype == torch.bfloat16 and codec.device == torch.device("cpu")
    latents = codec.encode(_images(1))
    assert latents.dtype == torch.float32  # outputs always float32
    assert codec.decode(latents).dtype == torch.float32
    loaded = load_vae(_tiny_kl().state_dict(), dtype=torch.float64)
    assert loaded.dtype == torch.float64


# ---------------------------------------------------------------------------------------------- errors
def test_loading_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        load_vae(tmp_path / "nowhere.safetensors")
    other = tmp_path / "vae.onnx"
    other.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"unsupported VAE file type '\.onnx'"):
        load_vae(other)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_vae(garbage)
    unrelated = tmp_path / "unet.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4)}, str(unrelated))
    with pytest.raises(ValueError, match="not a VAE state dict"):
        load_vae(unrelated)
    state = {k: v for k, v in _tiny_kl().state_dict().items() if k != "decoder.conv_out.bias"}
    with pytest.raises(ValueError, match=r"1 missing keys .*decoder\.conv_out\.bias"):
        load_vae(state)
    with pytest.raises(ValueError, match="kind='dc_ae'"):
        load_vae(_tiny_kl().state_dict(), kind="dc_ae")
    with pytest.raises(ValueError, match="kind: expected"):
        load_vae(_tiny_kl().state_dict(), kind="flux")
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        load_vae(empty_dir)
    bundle = tmp_path / "bad_bundle.safetensors"
    save_file({"model.w": torch.zeros(1)}, str(bundle), metadata={"vae_config": "{}"})
    with pytest.raises(ValueError, match="prefixed 'vae.'"):
        load_vae(bundle)
    with pytest.raises(TypeError, match="path_or_state"):
        load_vae(42)


def test_latent_channel_checks_and_input_errors():
    with pytest.raises(ValueError, match=r"encodes to 4 channels but .* expects 32"):
        load_vae(_tiny_kl().state_dict(), expected_latent_channels=32)
    with pytest.raises(ValueError, match=r"encodes to 32 channels but my model expects 4"):
        check_latent_channels(32, 4, model_name="my model")
    check_latent_channels(4, 4)
    codec = LatentCodec(_tiny_kl(), "demo_vae")
    with pytest.raises(ValueError, match=r"not a multiple of the demo_vae downscale factor 2"):
        codec.encode(torch.zeros(1, 3, 33, 32))
    with pytest.raises(ValueError, match=r"\[N, 4, H, W\].*got \[1, 32, 8, 8\]"):
        codec.decode(torch.zeros(1, 32, 8, 8))
    with pytest.raises(ValueError, match="chunk_size"):
        codec.decode(torch.zeros(1, 4, 8, 8), chunk_size=0)
    with pytest.raises(ValueError, match="empty batch"):
        codec.decode(torch.zeros(0, 4, 8, 8))
    with pytest.raises(TypeError, match="AutoencoderKL, AutoencoderDC or AutoencoderTiny"):
        LatentCodec(torch.nn.Linear(2, 2), "demo_vae")
    with pytest.raises(ValueError, match="needs an AutoencoderDC"):
        LatentCodec(_tiny_kl(), "dc_ae")
    assert math.isclose(LatentCodec(_tiny_kl(), "sd_vae").scaling_factor, 0.18215)
