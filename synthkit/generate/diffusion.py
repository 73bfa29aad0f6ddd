"""Stable Diffusion pieces shared by inversion and sampling: loading, the tiny offline model,
schedulers, prompt encoding, the guided denoising loop and VAE encode/decode."""

from __future__ import annotations

import contextlib
import inspect
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..core.config import LIKES, SCHEDULERS, check_choice
from ..core.errors import UserError
from ..core.jobs import check_output
from ..core.outputs import locked_output, written_whole

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer


@dataclass
class Diffusion:
    """The frozen parts of a Stable Diffusion checkpoint, on one device and dtype."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler_config: dict
    scheduler_class: str
    device: torch.device
    dtype: torch.dtype
    name: str

    @property
    def hidden_size(self) -> int:
        return int(self.unet.config.cross_attention_dim)

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def native_resolution(self) -> int:
        return int(self.unet.config.sample_size) * self.vae_scale

    @property
    def latent_scale(self) -> float:
        return float(self.vae.config.scaling_factor)

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        """(channels, height, width) of the latent of a resolution x resolution image."""
        side = resolution // self.vae_scale
        return (int(self.unet.config.in_channels), side, side)


def quiet_libraries() -> None:
    """diffusers and transformers print loading bars and advice; synthkit shows its own progress."""
    import diffusers.utils.logging as dlog
    import huggingface_hub.utils.logging as hlog
    import transformers.utils.logging as tlog

    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    hlog.set_verbosity_error()  # its retries offline would fill stderr before synthkit's one error line


def load_diffusion(model: str, device: torch.device, dtype: torch.dtype) -> Diffusion:
    """Load a diffusers-format SD 1.x/2.x checkpoint from a local folder or the hub (cache or download); `mini` is
    the miniature shipped with synthkit."""
    from diffusers import StableDiffusionPipeline

    from ..core.paths import resolve_model, shadowed_mini
    from ..core.progress import console

    quiet_libraries()
    source = resolve_model(model)
    if shadowed := shadowed_mini(model):
        console.print(f"note: {shadowed}", highlight=False, soft_wrap=True)
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            source, dtype=dtype, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    except Exception as err:  # hub, network and format errors come in many types
        if Path(model).exists():
            raise UserError(
                f"{model} is not a diffusers Stable Diffusion folder ({type(err).__name__}): "
                "it needs model_index.json, unet/, vae/, text_encoder/, tokenizer/ and scheduler/"
            ) from None
        raise UserError(
            f"cannot load model '{model}': it is not a local folder and is not in the Hugging Face cache, "
            "and it could not be downloaded (offline?). Pass --model PATH to a diffusers folder, "
            "or --model mini for the miniature shipped with synthkit, or make a test model with: synthkit model tiny "
            "--out models/tiny-sd"
        ) from None
    return diffusion_from_pipeline(pipe, device, dtype, model)


def diffusion_from_pipeline(pipe: Any, device: torch.device, dtype: torch.dtype, name: str) -> Diffusion:
    """The frozen parts of a loaded or built StableDiffusionPipeline, on the device, the UNet channels-last."""
    for part in (pipe.unet, pipe.vae, pipe.text_encoder):
        part.requires_grad_(False)
        part.to(device)
        part.eval()
    pipe.unet.to(memory_format=torch.channels_last)
    return Diffusion(
        pipe.unet,
        pipe.vae,
        pipe.text_encoder,
        pipe.tokenizer,
        dict(pipe.scheduler.config),
        type(pipe.scheduler).__name__,
        device,
        dtype,
        name,
    )


def make_scheduler(diffusion: Diffusion, name: str = "model"):
    """A fresh sampling scheduler: the model's own, DDIM, DPM-Solver++ or PNDM, from the model's config."""
    import diffusers

    classes = {
        "ddim": "DDIMScheduler",
        "dpm++": "DPMSolverMultistepScheduler",
        "pndm": "PNDMScheduler",
        "model": diffusion.scheduler_class,
    }
    check_choice(name, SCHEDULERS, "--scheduler")
    cls = getattr(diffusers, classes[name])
    if name == "dpm++":
        return cls.from_config(diffusion.scheduler_config, algorithm_type="dpmsolver++")
    if name == "pndm":  # SD 1.x's PNDM skips the PRK warm-up; a config of another scheduler does not say so
        return cls.from_config({"skip_prk_steps": True, **diffusion.scheduler_config})
    return cls.from_config(diffusion.scheduler_config)


def training_scheduler(diffusion: Diffusion):
    """The DDPM noise schedule the model was trained with (for the inversion loss)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(diffusion.scheduler_config)


@torch.no_grad()
def encode_text(diffusion: Diffusion, prompts: list[str], length: int | None = None) -> torch.Tensor:
    """CLIP hidden states (B, length, hidden) of prompts, as the UNet's conditioning; length defaults to the
    tokenizer's 77 (the official DI code pads its empty prompt to the embeddings' token count instead)."""
    tok = diffusion.tokenizer(
        prompts,
        padding="max_length",
        max_length=length or diffusion.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    return diffusion.text_encoder(tok.input_ids.to(diffusion.device))[0].to(diffusion.dtype)


def check_resolution(resolution: int, diffusion: Diffusion) -> None:
    """Resolutions must be multiples of the VAE's downsampling factor (8 for SD)."""
    if resolution <= 0 or resolution % diffusion.vae_scale:
        raise UserError(
            f"--resolution {resolution} is not a multiple of {diffusion.vae_scale} (the VAE's downsampling factor)"
        )


def initial_noise(seeds: list[int], shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """One latent per seed, each from its own generator: a sample does not depend on its batch."""
    noise = [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(noise).to(device, dtype)


def img2img_noise(
    seeds: list[int], shape: tuple[int, ...], device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per seed, the draw of the init image's latent from the VAE's posterior, then the noise added to it, both from
    one generator seeded with it: diffusers' StableDiffusionImg2ImgPipeline's order with a generator per sample."""
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    posterior = torch.stack([torch.randn(shape, generator=g) for g in generators])
    noise = torch.stack([torch.randn(shape, generator=g) for g in generators])
    return posterior.to(device, dtype), noise.to(device, dtype)


def img2img_start(steps: int, strength: float) -> int:
    """The first of `steps` sampler steps img2img runs: diffusers' get_timesteps, which runs int(steps * strength)
    steps (37 of 50 at 0.75); a strength that leaves none is refused."""
    kept = min(int(steps * strength), steps)
    if kept < 1:
        raise UserError(f"--strength {strength} at --steps {steps} leaves no step to run: raise --strength or --steps")
    return steps - kept


def derive_seed(*parts: int) -> int:
    """A 63-bit seed hashed from integers (job seed, index, ...): different parts never share a random stream."""
    entropy = [int(part) % 2**63 for part in parts]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))


def sample_seed(seed: int, index: int) -> int:
    """The seed of the sample at global position `index` of a job."""
    return derive_seed(seed, index)


def variance_noise(
    seeds: Sequence[int], shape: tuple[int, ...], device: torch.device, dtype: torch.dtype
) -> Callable[[], torch.Tensor]:
    """The noise a stochastic sampler (DDIM at eta > 0) adds at each step: one stream per sample, derived from its
    seed, so that a sample depends neither on its batch nor on its shard. Each call gives the next step's draw."""
    generators = [torch.Generator().manual_seed(derive_seed(int(s), 2)) for s in seeds]
    return lambda: torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device, dtype)


def accepts_eta(scheduler) -> bool:
    """Whether the scheduler's step takes eta (DDIM does; PNDM, SD 1.x's own, and DPM-Solver do not): the official
    pipeline passes it only then (src/pipeline_emb.py, prepare_extra_step_kwargs)."""
    return "eta" in inspect.signature(scheduler.step).parameters


@torch.no_grad()
def denoise(
    diffusion: Diffusion,
    scheduler,
    latents: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor | None,
    steps: int,
    guidance: float,
    start_step: int = 0,
    eta: float = 0.0,
    seeds: Sequence[int] | None = None,
    advance: Callable[[float], None] | None = None,
) -> torch.Tensor:
    """Run the sampler from `latents` with classifier-free guidance; cond and uncond may differ in length. With
    eta > 0 a scheduler that accepts it (DDIM) adds noise at every step, drawn from each sample's own stream.
    `advance` is told after each step its share of the run (1 / the steps run), so that a bar moves within a batch."""
    scheduler.set_timesteps(steps, device=diffusion.device)
    stochastic = eta > 0 and accepts_eta(scheduler)
    if stochastic and seeds is None:
        raise ValueError("eta > 0 needs the samples' seeds for their noise streams")
    draw = variance_noise(seeds, tuple(latents.shape[1:]), diffusion.device, latents.dtype) if stochastic else None
    timesteps = scheduler.timesteps[start_step:]
    latents = latents * scheduler.init_noise_sigma if start_step == 0 else latents
    same_length = uncond is not None and uncond.shape[1] == cond.shape[1]
    for t in timesteps:
        x = scheduler.scale_model_input(latents, t)
        if uncond is None or guidance == 1.0:
            eps = diffusion.unet(x, t, encoder_hidden_states=cond).sample
        elif same_length:
            both = diffusion.unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
            eps_u, eps_c = both.chunk(2)
            eps = eps_u + guidance * (eps_c - eps_u)
        else:
            eps_u = diffusion.unet(x, t, encoder_hidden_states=uncond).sample
            eps_c = diffusion.unet(x, t, encoder_hidden_states=cond).sample
            eps = eps_u + guidance * (eps_c - eps_u)
        extra = {"eta": eta, "variance_noise": draw()} if stochastic else {}
        latents = scheduler.step(eps, t, latents, **extra).prev_sample
        if advance is not None:
            advance(1 / len(timesteps))
    return latents


@torch.no_grad()
def decode(diffusion: Diffusion, latents: torch.Tensor, save_size: int | None = None) -> np.ndarray:
    """VAE-decode latents to uint8 images (B, H, W, 3); resized to save_size as the official DI code does
    (PIL bicubic on the uint8 image, which antialiases when shrinking)."""
    images = diffusion.vae.decode(latents.to(diffusion.dtype) / diffusion.latent_scale).sample.float()
    images = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return pil_resize(images, save_size) if save_size else images


def pil_resize(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 images (B, H, W, 3) resized to size x size with PIL bicubic (the official DI code's resizing)."""
    from PIL import Image

    if images.shape[1:3] == (size, size):
        return images
    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) for im in images])


def to_model_input(images: np.ndarray, resolution: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """uint8 images (B, H, W, 3) to [-1, 1] tensors, resized as the official DI code does: PIL bicubic on the
    uint8 image, then scaled."""
    return (torch.from_numpy(pil_resize(images, resolution)).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1).to(
        dtype
    )


@torch.no_grad()
def encode_images(diffusion: Diffusion, images: np.ndarray, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE's latent distribution (mean, std), already multiplied by the latent scale."""
    dist = diffusion.vae.encode(to_model_input(images, resolution, diffusion.device, diffusion.dtype)).latent_dist
    return dist.mean * diffusion.latent_scale, dist.std * diffusion.latent_scale


SD_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "clip_sample": False,
}  # SD 1.x's scheduler_config.json
NOISE_NOTE = "random weights: it makes noise, not pictures"

SD15 = {  # Stable Diffusion 1.5's component configs (unet/, vae/, text_encoder/ and scheduler/ config.json)
    "unet": {
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
    },
    "vae": {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "block_out_channels": (128, 256, 512, 512),
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "act_fn": "silu",
        "sample_size": 512,
        "scaling_factor": 0.18215,
    },
    "text_encoder": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "vocab_size": 49408,
        "max_position_embeddings": 77,
        "projection_dim": 768,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
    },
    "scheduler": ("PNDMScheduler", {**SD_SCHEDULE, "skip_prk_steps": True}),
}
SPECS = {"sd15": SD15}  # one per name of config.LIKES


def tiny_spec(hidden: int = 32) -> dict[str, Any]:
    """Component configs of the tiny test model: SD's layout at a fraction of the size, with SD 1.x's own scheduler
    (PNDM without the PRK warm-up, as SD 1.x's scheduler_config.json)."""
    return {
        "unet": {
            "sample_size": 8,
            "in_channels": 4,
            "out_channels": 4,
            "layers_per_block": 1,
            "block_out_channels": (32, 64),
            "norm_num_groups": 8,
            "cross_attention_dim": hidden,
            "attention_head_dim": 8,
            "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
        },
        "vae": SD15["vae"]
        | {
            "block_out_channels": (16, 16, 32, 32),
            "layers_per_block": 1,
            "norm_num_groups": 8,
            "sample_size": 64,
        },  # SD's VAE layout, narrower
        "text_encoder": {
            "hidden_size": hidden,
            "intermediate_size": 64,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "max_position_embeddings": 77,
        },
        "scheduler": SD15["scheduler"],
    }


def like_spec(like: str) -> dict[str, Any]:
    """The component configs of a full-size architecture by name (only sd15 for now)."""
    check_choice(like, LIKES, "--like")
    return SPECS[like]


def build_components(spec: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """Random-weight UNet, VAE and CLIP text encoder, an offline tokenizer and a scheduler, in the default dtype and
    device."""
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    quiet_libraries()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**spec["unet"])
    vae = AutoencoderKL(**spec["vae"])
    tokenizer = offline_tokenizer()
    text = {"vocab_size": len(tokenizer), **spec["text_encoder"]}
    if len(tokenizer) > text["vocab_size"]:
        raise ValueError(
            f"the offline tokenizer has {len(tokenizer)} tokens, more than the text encoder's {text['vocab_size']}"
        )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            **text,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler_class, schedule = spec["scheduler"]
    scheduler = getattr(diffusers, scheduler_class).from_config(schedule)
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "scheduler": scheduler}


def offline_tokenizer() -> CLIPTokenizer:
    """A character-level CLIPTokenizer built without any download (ids 0-513; SD's real one has 49,408)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=_byte_vocab(), merges=[], model_max_length=77)


def random_pipeline(like: str = "sd15", seed: int = 0, dtype: torch.dtype = torch.float16) -> StableDiffusionPipeline:
    """A full-size model's exact shapes with random weights, in memory; drawn in fp16 (2.5x faster on a CPU), cast to
    dtype."""
    spec = like_spec(like)
    with _default_dtype(torch.float16):
        parts = build_components(spec, seed)
    return _assemble(parts).to(dtype=dtype)


@locked_output("out", folder=True)
def build_random_pipeline(out: str | Path, like: str = "sd15", seed: int = 0, overwrite: bool = False) -> Path:
    """Save `random_pipeline(like, seed)` in fp16 (about 2 GB for sd15) as a diffusers folder, offline."""
    check_model_output(out, overwrite)
    return _save_pipeline(
        random_pipeline(like, seed, torch.float16), out, {"kind": "random", "like": like, "seed": seed}
    )


@locked_output("out", folder=True)
def build_tiny_pipeline(out: str | Path, seed: int = 0, hidden: int = 32, overwrite: bool = False) -> Path:
    """A small random-weight SD pipeline (UNet, VAE, CLIP text encoder and a locally built tokenizer), saved offline."""
    check_model_output(out, overwrite)
    pipe = _assemble(build_components(tiny_spec(hidden), seed))
    return _save_pipeline(pipe, out, {"kind": "tiny-random", "seed": seed, "hidden": hidden})


def parameter_counts(folder: str | Path) -> dict[str, int]:
    """Parameters of each weighted part (unet, text_encoder, vae) of a diffusers folder, read from the safetensors
    headers."""
    from safetensors import safe_open

    counts = {}
    for part in ("unet", "text_encoder", "vae"):
        total = 0
        for path in sorted((Path(folder) / part).glob("*.safetensors")):
            with safe_open(str(path), framework="pt") as f:
                total += sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())
        counts[part] = total
    return counts


def folder_bytes(folder: str | Path) -> int:
    """Total size of the files under a folder."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def _assemble(parts: dict[str, Any]) -> StableDiffusionPipeline:
    """A StableDiffusionPipeline of the parts, without safety checker or feature extractor."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def check_model_output(out: str | Path, overwrite: bool) -> None:
    """A model folder to build: --overwrite replaces only a model synthkit built (its synthkit.json says so), never
    a folder of anything else, which it would delete."""
    out = Path(out)
    check_output(out, [], overwrite, resume=False, resumable=False, folder=True)
    if out.exists() and not (out / "synthkit.json").is_file():
        raise UserError(
            f"{out} is not a model synthkit built (no synthkit.json): --overwrite replaces only those; "
            "choose another --out, or remove the folder yourself"
        )


def _save_pipeline(pipe: StableDiffusionPipeline, out: str | Path, note: dict[str, Any]) -> Path:
    return save_folder(out, lambda folder: pipe.save_pretrained(str(folder)), {**note, "note": NOISE_NOTE})


def save_folder(out: str | Path, save: Callable[[Path], None], note: dict[str, Any]) -> Path:
    """save(folder) (a model's save_pretrained) into `out` plus synthkit.json, which says how it was made (`note`).
    Written into OUT.partial and renamed when complete, so an interrupted save never looks
    like a model."""
    out = Path(out)
    with written_whole(out, folder=True) as partial:  # an interrupted build's .partial: nothing in it is worth keeping
        save(partial)
        (partial / "synthkit.json").write_text(json.dumps(note, indent=1))
    return out


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Create new tensors in `dtype` inside the block."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _byte_vocab() -> dict[str, int]:
    """A character-level CLIP vocabulary (GPT-2 byte alphabet, word-final forms, special tokens)."""
    alphabet = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    extra = [b for b in range(256) if b not in alphabet]
    chars = [chr(b) for b in alphabet] + [chr(256 + i) for i in range(len(extra))]
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}
