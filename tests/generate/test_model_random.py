import json

import pytest
import torch

from synthkit.generate.diffusion import build_components, like_spec

from conftest import run, usage_error

# Stable Diffusion 1.5's own config.json values (runwayml/stable-diffusion-v1-5), copied here as the reference
SD15_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "act_fn": "silu",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "center_input_sample": False,
}
SD15_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
SD15_TEXT = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "vocab_size": 49408,
    "max_position_embeddings": 77,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}
SD15_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "skip_prk_steps": True,
    "steps_offset": 1,
    "set_alpha_to_one": False,
    "num_train_timesteps": 1000,
    "clip_sample": False,
}


def _same(config, expected: dict) -> bool:
    return all(list(v) == list(config[k]) if isinstance(v, tuple) else config[k] == v for k, v in expected.items())


def test_sd15_shapes_match_stable_diffusion_15():
    with torch.device("meta"):  # shapes without spending time and memory on 1.07 billion random numbers
        parts = build_components(like_spec("sd15"))
    assert _same(parts["unet"].config, SD15_UNET) and _same(parts["vae"].config, SD15_VAE)
    assert _same(parts["text_encoder"].config.to_dict(), SD15_TEXT)
    assert type(parts["scheduler"]).__name__ == "PNDMScheduler" and _same(parts["scheduler"].config, SD15_SCHEDULER)
    counts = {name: sum(p.numel() for p in parts[name].parameters()) for name in ("unet", "text_encoder", "vae")}
    assert counts == {"unet": 859_520_964, "text_encoder": 123_060_480, "vae": 83_653_863}
    ids = parts["tokenizer"]("a photo of an airplane, 42 !").input_ids
    assert max(ids) < SD15_TEXT["vocab_size"] and ids[-1] == parts["text_encoder"].config.eos_token_id


def test_unknown_architecture_is_a_usage_error(tmp_path):
    result = run("model", "random", "--like", "sdxl", "--out", tmp_path / "m")
    usage_error(result, "--like", "'sd15'")
    assert not (tmp_path / "m").exists()


def test_random_model_refuses_to_overwrite(tmp_path):
    (tmp_path / "m").mkdir()
    result = run("model", "random", "--out", tmp_path / "m")
    assert result.exit_code == 2 and "--overwrite" in result.stderr


def test_report_says_a_random_model_makes_noise(tmp_path, small_real):
    from synthkit.io.store import Store, StoreWriter
    from synthkit.report.results import generator_warning

    model = tmp_path / "sd15-random"
    model.mkdir()
    (model / "synthkit.json").write_text(json.dumps({"kind": "random", "like": "sd15"}))
    data = tmp_path / "data"
    data.mkdir()
    with (
        Store(small_real) as s,
        StoreWriter(
            data / "inv.h5",
            classes=s.classes,
            image_shape=s.image_shape[:2],
            meta={"kind": "inv", "params": {"model": str(model)}},
            total=len(s),
        ) as w,
    ):
        w.append(s.images(), s.labels)
    assert "These synthetic images are noise" in "\n".join(generator_warning(data))


@pytest.mark.slow
def test_invert_sample_train_on_the_sd15_shaped_model(tmp_path, small_real, monkeypatch):
    """The full-size architecture end to end on the CPU: 2 updates of inversion, 2 sampling steps, 2 training steps."""
    from synthkit.io.store import Store

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, emb = tmp_path / "sd15-random", tmp_path / "airplane.safetensors"
    inv, clf = tmp_path / "inv.h5", tmp_path / "clf.safetensors"
    result = run("model", "random", "--like", "sd15", "--out", model)
    assert result.exit_code == 0, result.output
    assert "UNet 859.5M" in result.stdout and "text encoder 123.1M" in result.stdout
    assert json.loads((model / "synthkit.json").read_text())["kind"] == "random"

    result = run(
        "invert",
        "--class",
        "airplane",
        "--data",
        small_real,
        "--model",
        model,
        "--resolution",
        64,
        "--updates",
        2,
        "--batch-size",
        2,
        "--group-size",
        2,
        "--preview-every",
        0,
        "--out",
        emb,
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    assert emb.exists()

    result = run("sample", "--embeddings", emb, "--per-image", 1, "--steps", 2, "--batch-size", 2, "--out", inv)
    assert result.exit_code == 0, result.output
    with Store(inv) as store:
        assert len(store) == 4 and set(store.labels.tolist()) == {store.classes.index("airplane")}

    result = run(
        "train", "--data", inv, "--out", clf, "--recipe", "quick", "--steps", 2, "--batch-size", 2, "--device", "cpu"
    )
    assert result.exit_code == 0, result.output
    assert clf.exists()
