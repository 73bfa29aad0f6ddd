"""A miniature Stable Diffusion that synthkit trains on a store and ships (`--model mini`), so that every stage of
the study makes real pictures offline. It is SD's own format (AutoencoderKL, UNet2DConditionModel, a CLIP text
encoder and tokenizer, SD 1.x's PNDM scheduler), so everything that loads SD loads it unchanged.

Two stages, each resumable: the VAE learns to reconstruct the store's images (MSE plus SD's small KL weight), then,
on the VAE's latents, the UNet and the text encoder learn to predict noise under SD's schedule, conditioned on
class prompts ("a photo of a {class}") with the empty prompt dropped in at SD's 10% so that guidance works. The
text encoder is trained with the UNet (it starts random: no pretrained CLIP is reachable offline). The UNet and
text encoder ship as an exponential moving average of their weights.

So that Diffusion Inversion has somewhere to land, part of every UNet batch is conditioned not on a prompt but on an
instance code in DI's own format (tokens x hidden), made from the row's own latent by an encoder trained with the UNet
(Diffusion Autoencoders, Preechakul et al. 2022): noise on every code, so that a code cannot carry its latent whole
and DI's perturbed and interpolated embeddings stay in what the UNet has seen, and the batch's mean code (DI's
unconditional input) in a share of rows. The codes fill DI's whole token space rather than a narrow subspace of it,
since inversion's AdamW moves every coordinate alike. The encoder is saved beside the pipeline (diffusers ignores it):
DI still learns its codes from its official random start."""

from __future__ import annotations

import contextlib
import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..core.config import MiniConfig
from ..core.errors import UserError
from ..core.jobs import Asked, check_destination, check_input_outside, check_made_as_asked, check_same_options
from ..core.meta import command_line, jsonable
from ..core.outputs import locked_output, written_whole
from ..core.paths import preview_path, resolve_model
from ..core.version import __version__
from .diffusion import SD_SCHEDULE, build_components, check_model_output, derive_seed, quiet_libraries, save_folder

VAE_FACTOR = 4  # the VAE halves the side twice: 32 px images, 8x8 latents
ENCODER_FILE = "instance_encoder.safetensors"


def mini_spec(config: MiniConfig, image_size: int) -> dict[str, Any]:
    """Component configs: SD 1.x's layout (its block types, attention, scheduler) at a fraction of the width."""
    unet = config.unet_channels
    levels = len(unet)
    heads = max(1, unet[0] // 32)
    return {
        "unet": {
            "sample_size": image_size // VAE_FACTOR,
            "in_channels": config.latent_channels,
            "out_channels": config.latent_channels,
            "layers_per_block": 1,
            "block_out_channels": unet,
            "down_block_types": ("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
            "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
            "cross_attention_dim": config.text_hidden,
            "attention_head_dim": heads,
            "norm_num_groups": 32,
        },
        "vae": {
            "in_channels": 3,
            "out_channels": 3,
            "latent_channels": config.latent_channels,
            "block_out_channels": config.vae_channels,
            "down_block_types": ("DownEncoderBlock2D",) * len(config.vae_channels),
            "up_block_types": ("UpDecoderBlock2D",) * len(config.vae_channels),
            "layers_per_block": 1,
            "norm_num_groups": 16,
            "act_fn": "silu",
            "sample_size": image_size,
            "scaling_factor": 1.0,  # measured after stage 1, as SD's 0.18215 was
        },
        "text_encoder": {
            "hidden_size": config.text_hidden,
            "intermediate_size": 4 * config.text_hidden,
            "num_attention_heads": max(1, config.text_hidden // 32),
            "num_hidden_layers": config.text_layers,
            "max_position_embeddings": 77,
            "hidden_act": "quick_gelu",
        },
        "scheduler": ("PNDMScheduler", {**SD_SCHEDULE, "skip_prk_steps": True}),
    }


def check_mini(config: MiniConfig, image_size: int) -> None:
    """One error line for settings that cannot train, before anything is built."""
    side = image_size // VAE_FACTOR
    if image_size % VAE_FACTOR or side < 2 ** (len(config.unet_channels) - 1):
        raise UserError(
            f"the store's images are {image_size} px: the miniature needs a multiple of {VAE_FACTOR} of at least "
            f"{VAE_FACTOR * 2 ** (len(config.unet_channels) - 1)} px (import with --size)"
        )
    for name in ("vae_lr", "lr"):
        value = getattr(config, name)
        if not (math.isfinite(value) and value > 0):
            raise UserError(f"--{name.replace('_', '-')} must be a positive number, got {value}")
    if not 0 <= config.uncond_prob < 1:
        raise UserError(f"--uncond-prob must be in [0, 1), got {config.uncond_prob}")
    if not 0 <= config.instance_share < 1:
        raise UserError(f"--instance-share must be in [0, 1), got {config.instance_share}")
    if not 0 <= config.ema < 1:
        raise UserError(f"--ema must be in [0, 1), got {config.ema}")
    if not 0 <= config.mean_code_prob < 1 or not 0 <= config.code_noise_min <= config.code_noise:
        raise UserError("--mean-code-prob must be in [0, 1) and 0 <= --code-noise-min <= --code-noise")
    if "{class}" not in config.template:
        raise UserError(f"--template must contain {{class}}, got '{config.template}'")
    if any(c % 32 for c in config.unet_channels) or any(c % 16 for c in config.vae_channels):
        raise UserError("UNet widths must be multiples of 32 and VAE widths multiples of 16 (their group norms)")


class InstanceEncoder(torch.nn.Module):
    """A clean latent -> a code of `tokens` x `hidden` (DI's embedding format) through a `dim`-wide bottleneck, each
    token layer-normalised so that codes have a known scale for DI's noise and a start near its own (near 0)."""

    def __init__(self, latent_channels: int, side: int, tokens: int, hidden: int, dim: int, width: int = 64):
        super().__init__()
        self.tokens, self.hidden = tokens, hidden
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(latent_channels, width, 3, padding=1),
            torch.nn.SiLU(),
            torch.nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            torch.nn.SiLU(),
            torch.nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1),
            torch.nn.SiLU(),
            torch.nn.Flatten(),
            torch.nn.Linear(2 * width * math.ceil(side / 4) ** 2, dim),
        )
        self.out = torch.nn.Linear(dim, tokens * hidden)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        codes = self.out(self.net(latents)).view(len(latents), self.tokens, self.hidden)
        return torch.nn.functional.layer_norm(codes, (self.hidden,))


def instance_encoder(config: MiniConfig, image_size: int) -> InstanceEncoder:
    """The encoder of instance codes at the config's sizes (seeded from the model's seed)."""
    torch.manual_seed(derive_seed(config.seed, 4))
    side = image_size // VAE_FACTOR
    return InstanceEncoder(config.latent_channels, side, config.code_tokens, config.text_hidden, config.code_dim)


def load_start(parts: dict[str, Any], folder: str) -> None:
    """Put a trained miniature's VAE, UNet and text encoder (fp16 on disk) into freshly built parts of the same
    shape, so that a new UNet stage starts from them; one error line when the shapes differ."""
    from diffusers import StableDiffusionPipeline

    quiet_libraries()
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            resolve_model(folder), safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    except Exception as err:  # format and missing-file errors come in many types
        raise UserError(
            f"--start-from {folder}: not a diffusers Stable Diffusion folder ({type(err).__name__})"
        ) from None
    for name in ("vae", "unet", "text_encoder"):
        try:
            parts[name].load_state_dict({k: v.float() for k, v in getattr(pipe, name).state_dict().items()})
        except RuntimeError:
            raise UserError(
                f"--start-from {folder}: its {name} has another shape than this run's (width, latent channels)"
            ) from None


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up, then a cosine from the peak down to a tenth of it."""
    return min(1.0, (step + 1) / max(1, warmup)) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(step, steps) / steps)))


class Stage:
    """One stage's optimiser, schedule and moving average: what `state` saves and `load` restores."""

    def __init__(self, modules: dict[str, torch.nn.Module], lr: float, steps: int, warmup: int, ema: float | None):
        self.modules = modules
        params = [p for m in modules.values() for p in m.parameters()]
        fused = params[0].device.type == "cuda"
        self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=fused or None)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: _lr_factor(step, steps, warmup))
        self.ema_decay = ema
        self.ema = {k: [p.detach().clone() for p in m.parameters()] for k, m in modules.items()} if ema else {}

    @torch.no_grad()
    def update_ema(self, step: int) -> None:
        if not self.ema:
            return
        decay = min(self.ema_decay, (1 + step) / (10 + step))
        for key, module in self.modules.items():
            torch._foreach_lerp_(self.ema[key], [p.detach() for p in module.parameters()], 1 - decay)

    def optimise(self, loss: torch.Tensor, step: int, clip: float | None = None) -> None:
        """One step's update on `loss` (its gradient norm clipped to `clip` when given): the optimiser, the schedule
        and the moving average, in the order both stages step them."""
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_([p for m in self.modules.values() for p in m.parameters()], clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step()
        self.update_ema(step)

    @torch.no_grad()
    def swap_in_ema(self) -> None:
        """Put the moving average into the modules (what ships)."""
        for key, module in self.modules.items():
            for p, e in zip(module.parameters(), self.ema.get(key, [])):
                p.copy_(e)

    def state(self) -> dict[str, Any]:
        return {
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "ema": self.ema,
        }

    def load(self, saved: dict[str, Any]) -> None:
        for key, module in self.modules.items():
            module.load_state_dict(saved["modules"][key])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.schedule.load_state_dict(saved["schedule"])
        self.ema = saved["ema"]


def state_path(out: Path) -> Path:
    """The resumable state of a model being trained: models/mini-sd -> models/mini-sd.train-state.pt."""
    return out.with_name(out.name + ".train-state.pt")


def log_path(out: Path) -> Path:
    """The JSON-lines log of losses: models/mini-sd -> models/mini-sd.log.jsonl."""
    return out.with_name(out.name + ".log.jsonl")


def _step_generators(seed: int, stage: int, step: int, device: torch.device) -> tuple[torch.Generator, torch.Generator]:
    """The random streams of one step (rows on the CPU, noise on the device), from the seed, stage and step alone:
    a resumed run draws what the uninterrupted one drew."""
    value = derive_seed(seed, stage, step)
    return torch.Generator().manual_seed(value), torch.Generator(device).manual_seed(value)


def _to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) on the device to float (B, 3, H, W) in [-1, 1]."""
    return images.permute(0, 3, 1, 2).float() / 127.5 - 1


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{platform.processor() or platform.machine()} CPU, {cores} cores"


@dataclass
class _Training:
    """What the steps of one train_mini run share: the store's images and classes on the device, the parts being
    trained, the state resumed, and the run's clock and log (which the resumable state saves with the weights)."""

    data: Path
    out: Path
    config: MiniConfig
    dev: torch.device
    size: int
    classes: list[str]
    fingerprint: str
    settings: dict[str, Any]
    saved: dict[str, Any]
    parts: dict[str, Any]
    encoder: InstanceEncoder | None
    images: torch.Tensor
    labels: torch.Tensor
    autocast: Any
    say: Callable[[str], None]
    started: float = 0.0
    log: list[dict[str, Any]] = field(default_factory=list)
    last_save: float = 0.0
    last_preview: float = 0.0

    def open_log(self) -> None:
        """Start the clock and the log where the state resumed left them (at zero when new), and write that log out:
        the log file then grows row by row."""
        elapsed = float(self.saved.get("seconds", 0.0))
        self.started = time.perf_counter() - elapsed
        self.log = list(self.saved.get("log", []))
        with written_whole(log_path(self.out)) as tmp:
            tmp.write_text("".join(json.dumps(row) + "\n" for row in self.log))
        self.last_save = self.last_preview = time.perf_counter()

    def log_row(self, row: dict[str, Any]) -> None:
        """Add a row to the log, in memory (saved with the state) and at the end of the log file."""
        self.log.append(row)
        with log_path(self.out).open("a") as f:
            f.write(json.dumps(row) + "\n")

    def checkpoint_if_due(self, stage_name: str, step: int, stage: Stage) -> None:
        """Save the resumable state when `checkpoint_every` seconds have passed since the last save, so that a killed
        run loses at most that much."""
        if time.perf_counter() - self.last_save > self.config.checkpoint_every:
            self.save_state(stage_name, step, stage)
            self.last_save = time.perf_counter()

    def save_state(self, stage_name: str, step: int, stage: Stage) -> None:
        """Write the resumable state: the settings, the stage and its next step, the time and log so far, the stage's
        trainer, and in the UNet stage the finished VAE."""
        payload = {
            "settings": self.settings,
            "stage": stage_name,
            "step": step,
            "seconds": time.perf_counter() - self.started,
            "log": self.log,
            "trainer": stage.state(),
        }
        if stage_name == "unet":
            payload["vae"] = self.parts["vae"].state_dict()
        with written_whole(state_path(self.out)) as tmp:
            torch.save(payload, tmp)


@locked_output("out", folder=True, inputs=["data"])
def train_mini(
    data: Path,
    out: Path,
    config: MiniConfig | None = None,
    device: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    say=print,
) -> dict[str, Any]:
    """Train a miniature SD pipeline on the store `data` and save it as a diffusers folder at `out` (fp16 weights,
    synthkit.json saying how it was made). Returns that record."""
    from ..core.device import job_device
    from ..io.store import Store

    config = config or MiniConfig()
    out = Path(out)
    kept = _check_destination_or_keep(data, out, config, overwrite, resume, say)
    if kept is not None:
        return kept
    with Store(data) as store:
        store.require_images(" to train a model on")
        size = store.image_shape[0]
        check_mini(config, size)
        images_np, labels_np, classes = store.images(), store.labels, list(store.classes)
        fingerprint = store.fingerprint
    dev = job_device(device)
    quiet_libraries()
    settings = {"config": jsonable(asdict(config)), "data": fingerprint, "image_size": size}
    saved = _resumed_state(out, resume, settings)
    parts, encoder = _build_parts(config, size, dev)
    run = _Training(
        data=data,
        out=out,
        config=config,
        dev=dev,
        size=size,
        classes=classes,
        fingerprint=fingerprint,
        settings=settings,
        saved=saved,
        parts=parts,
        encoder=encoder,
        images=torch.from_numpy(images_np).to(dev),
        labels=torch.from_numpy(labels_np).to(dev),
        autocast=torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else _null(),
        say=say,
    )
    run.open_log()
    _train_vae(run)
    scale = _latent_scale(parts["vae"], run.images, dev, run.autocast)
    parts["vae"].register_to_config(scaling_factor=scale)
    _train_unet(run, scale)
    return _finish(run)


def _check_destination_or_keep(
    data: Path, out: Path, config: MiniConfig, overwrite: bool, resume: bool, say: Callable[[str], None]
) -> dict[str, Any] | None:
    """The record of a finished model that --resume keeps (made the same way), else None once `out` may be written;
    one error line for an output or an interrupted run's state that the options do not let this run replace."""
    start_folder = resolve_model(config.start_from) if config.start_from else None
    check_destination(out, [start_folder], folder=True)  # an input too (the store: the lock's)
    for given in (data, start_folder):  # --overwrite replaces the folder whole
        if given is not None:
            check_input_outside(given, out)
    state_file = state_path(out)
    if out.exists() and resume and (out / "synthkit.json").is_file() and not state_file.exists():
        check_made_as_asked(out, _asked(data, config))
        say(f"{out} is finished and was made the same way: kept (--overwrite trains it again)")
        return json.loads((out / "synthkit.json").read_text())
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists: pass --overwrite to replace it")
    if out.exists():
        check_model_output(out, overwrite)
    if state_file.exists() and not (resume or overwrite):
        raise UserError(
            f"an interrupted run of {out} left {state_file}: pass --resume to continue it, or --overwrite to start "
            "again"
        )
    return None


def _resumed_state(out: Path, resume: bool, settings: dict[str, Any]) -> dict[str, Any]:
    """The state an interrupted run left, when resuming (one error line if it was made with other settings); else
    empty, and any such state and its log are removed so that the run starts afresh."""
    state_file = state_path(out)
    saved: dict[str, Any] = {}
    if resume and state_file.exists():
        saved = torch.load(state_file, map_location="cpu", weights_only=False)
        check_same_options(saved.get("settings"), settings, state_file)
    elif state_file.exists():
        state_file.unlink()
        log_path(out).unlink(missing_ok=True)
    return saved


def _build_parts(config: MiniConfig, size: int, dev: torch.device) -> tuple[dict[str, Any], InstanceEncoder | None]:
    """SD's components at the miniature's sizes (--start-from's weights in them when given) and the instance encoder
    (None without instance rows), on the device and in training mode."""
    parts = build_components(mini_spec(config, size), config.seed)
    if config.start_from:
        load_start(parts, config.start_from)
    encoder = instance_encoder(config, size).to(dev).train() if config.instance_share else None
    for module in (parts["vae"], parts["unet"], parts["text_encoder"]):
        module.to(dev).train()
    parts["unet"].to(memory_format=torch.channels_last)
    return parts, encoder


def _log_due(step: int, steps: int) -> bool:
    """Whether a stage's step is logged: every 50th, and its last."""
    return step % 50 == 0 or step == steps - 1


def _train_vae(run: _Training) -> None:
    """Stage 1: the VAE learns to reconstruct the store's images (from the state resumed; skipped when that state is
    past it or the run starts from a trained model), then is frozen for stage 2."""
    from ..core.progress import progress

    config, saved, vae = run.config, run.saved, run.parts["vae"]
    vae_stage = Stage({"vae": vae}, config.vae_lr, config.vae_steps, config.warmup_steps, None)
    vae_done = saved.get("stage") == "unet" or bool(config.start_from)
    first = 0
    if saved.get("stage") == "vae":
        vae_stage.load(saved["trainer"])
        first = int(saved["step"])
    elif saved.get("stage") == "unet":
        vae.load_state_dict(saved["vae"])
    if not vae_done:
        with progress("loss") as bar:
            task = bar.add_task("VAE", total=config.vae_steps, completed=first, loss="")
            for step in range(first, config.vae_steps):
                mse = _vae_step(run, vae_stage, step)
                if _log_due(step, config.vae_steps):
                    psnr = 10 * math.log10(4 / max(mse.item(), 1e-12))
                    run.log_row({"stage": "vae", "step": step, "mse": mse.item(), "psnr": psnr})
                    bar.update(task, completed=step + 1, loss=f"PSNR {psnr:.1f} dB")
                run.checkpoint_if_due("vae", step + 1, vae_stage)
        run.say(f"VAE: {config.vae_steps} steps, training PSNR {run.log[-1]['psnr']:.2f} dB")
    elif config.start_from:
        run.say(f"VAE: kept from {config.start_from}")
    vae.eval().requires_grad_(False)


def _vae_step(run: _Training, stage: Stage, step: int) -> torch.Tensor:
    """One VAE step on a batch of store images, half of them flipped: reconstruction MSE plus SD's small KL weight.
    Returns the MSE (what the log reports as PSNR)."""
    config, dev, vae = run.config, run.dev, run.parts["vae"]
    rows_gen, noise_gen = _step_generators(config.seed, 1, step, dev)
    rows = torch.randint(len(run.images), (config.vae_batch_size,), generator=rows_gen).to(dev)
    x = _flip(_to_unit(run.images[rows]), rows_gen)
    with run.autocast:
        dist = vae.encode(x).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=noise_gen, device=dev)
        recon = vae.decode(z).sample
    mse = torch.nn.functional.mse_loss(recon.float(), x)
    stage.optimise(mse + config.kl_weight * dist.kl().float().mean(), step)
    return mse


@dataclass
class _UnetInputs:
    """What every UNet step draws its batch from: each image's latent distribution and their scale, the tokens of the
    class prompts (the empty prompt last), SD's noise schedule, and how many rows of a batch take instance codes."""

    mean: torch.Tensor
    std: torch.Tensor
    scale: float
    ids: torch.Tensor
    alphas: torch.Tensor
    timesteps: int
    n_codes: int


def _unet_inputs(run: _Training, scale: float) -> _UnetInputs:
    """Encode every image once with the frozen VAE, tokenise the prompts and set up SD's schedule for stage 2."""
    from diffusers import DDPMScheduler

    config, tokenizer = run.config, run.parts["tokenizer"]
    mean, std = _encode_all(run.parts["vae"], run.images, run.dev, run.autocast)
    prompts = [config.template.format(**{"class": name}) for name in run.classes] + [""]
    ids = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    ids = ids.to(run.dev)
    schedule = DDPMScheduler.from_config(SD_SCHEDULE)
    alphas = schedule.alphas_cumprod.to(run.dev)
    n_codes = round(config.batch_size * config.instance_share)
    return _UnetInputs(mean, std, scale, ids, alphas, schedule.config.num_train_timesteps, n_codes)


def _unet_stage(run: _Training) -> tuple[Stage, int]:
    """Stage 2's trainer over the UNet, the text encoder and the instance encoder, and the step it starts at: the
    state resumed's when that state is in stage 2, else 0."""
    config, encoder = run.config, run.encoder
    trained = {
        "unet": run.parts["unet"],
        "text_encoder": run.parts["text_encoder"],
        **({"instance_encoder": encoder} if encoder else {}),
    }
    unet_stage = Stage(trained, config.lr, config.steps, config.warmup_steps, config.ema)
    if run.saved.get("stage") != "unet":
        return unet_stage, 0
    unet_stage.load(run.saved["trainer"])
    unet_stage.ema = {k: [t.to(run.dev) for t in v] for k, v in unet_stage.ema.items()}
    return unet_stage, int(run.saved["step"])


def _train_unet(run: _Training, scale: float) -> None:
    """Stage 2: the UNet and the text encoder (and the instance encoder) learn to predict noise on the latents, with
    previews as it goes; what ships is their moving average, put into them at the end."""
    from ..core.progress import progress

    config = run.config
    inputs = _unet_inputs(run, scale)
    unet_stage, first = _unet_stage(run)
    preview = preview_path(run.out)
    with progress("loss") as bar:
        task = bar.add_task("UNet", total=config.steps, completed=first, loss="")
        for step in range(first, config.steps):
            loss = _unet_step(run, unet_stage, inputs, step)
            if _log_due(step, config.steps):
                value = loss.item()
                if not math.isfinite(value):
                    raise UserError(f"training diverged at UNet step {step} (loss {value}): try a lower --lr")
                run.log_row({"stage": "unet", "step": step, "loss": value})
                bar.update(task, completed=step + 1, loss=f"loss {value:.4f}")
            run.checkpoint_if_due("unet", step + 1, unet_stage)
            if config.preview_every and time.perf_counter() - run.last_preview > config.preview_every:
                _preview(
                    run.parts, unet_stage, run.classes, config, run.dev, preview, f"step {step + 1} of {config.steps}"
                )
                run.last_preview = time.perf_counter()
    unet_stage.swap_in_ema()


def _unet_step(run: _Training, stage: Stage, inputs: _UnetInputs, step: int) -> torch.Tensor:
    """One UNet step on a batch of noised latents, half of them flipped: its first rows conditioned on class prompts
    (on the empty prompt at `uncond_prob`), the rest on instance codes. Returns the noise-prediction loss."""
    config, dev = run.config, run.dev
    unet, text = run.parts["unet"], run.parts["text_encoder"]
    rows_gen, noise_gen = _step_generators(config.seed, 2, step, dev)
    rows = torch.randint(len(run.images), (config.batch_size,), generator=rows_gen).to(dev)
    flip = torch.rand(config.batch_size, generator=rows_gen).to(dev) < 0.5
    drop = torch.rand(config.batch_size, generator=rows_gen).to(dev) < config.uncond_prob
    t = torch.randint(0, inputs.timesteps, (config.batch_size,), generator=rows_gen).to(dev)
    m = torch.where(flip[:, None, None, None], inputs.mean[rows].flip(-1), inputs.mean[rows])
    s = torch.where(flip[:, None, None, None], inputs.std[rows].flip(-1), inputs.std[rows])
    eps = torch.randn(m.shape, generator=noise_gen, device=dev)
    z = (m + s * torch.randn(m.shape, generator=noise_gen, device=dev)) * inputs.scale
    a = inputs.alphas[t].view(-1, 1, 1, 1)
    noisy = a.sqrt() * z + (1 - a).sqrt() * eps
    prompt = torch.where(drop, len(run.classes), run.labels[rows])
    noisy = noisy.contiguous(memory_format=torch.channels_last)
    k = config.batch_size - inputs.n_codes  # rows 0..k-1 take prompts, the rest instance codes
    with run.autocast:
        cond = text(inputs.ids[prompt[:k]])[0]
        pred = unet(noisy[:k], t[:k], encoder_hidden_states=cond).sample
        if inputs.n_codes:
            codes = _instance_codes(run.encoder, m[k:] * inputs.scale, config, rows_gen, noise_gen)
            pred = torch.cat([pred, unet(noisy[k:], t[k:], encoder_hidden_states=codes).sample])
    loss = torch.nn.functional.mse_loss(pred.float(), eps)
    stage.optimise(loss, step, clip=1.0)
    return loss


def _finish(run: _Training) -> dict[str, Any]:
    """Draw the final preview, then log the final figures, save the pipeline with its record and drop the resumable
    state (the run is done). Returns the record."""
    config = run.config
    if config.preview_every:  # 0: no previews, the final one included
        _preview(run.parts, None, run.classes, config, run.dev, preview_path(run.out), f"final, {config.steps} steps")
    seconds = time.perf_counter() - run.started  # the final preview included
    record = _record(run, seconds)
    run.log_row({"stage": "done", **{k: record[k] for k in ("final_vae_psnr", "final_loss", "seconds")}})
    _save(run.parts, run.out, record, run.encoder)
    state_path(run.out).unlink(missing_ok=True)
    run.say(f"UNet: {config.steps} steps, final loss {record['final_loss']:.4f}")
    return record


def _record(run: _Training, seconds: float) -> dict[str, Any]:
    """The finished model's synthkit.json: what it learnt from, how long and where, its final figures (the VAE's from
    the model it started from when it kept that one's) and its settings."""
    start = _start_record(run.config.start_from)
    return {
        "kind": "mini",
        "synthkit_version": __version__,
        "command": command_line(),
        "data": str(run.data),
        "data_fingerprint": run.fingerprint,
        "images": len(run.images),
        "classes": run.classes,
        "image_size": run.size,
        "vae_steps": run.config.vae_steps,
        "unet_steps": run.config.steps,
        "seconds": round(seconds, 1),
        "machine": _machine(run.dev),
        "device": str(run.dev),
        "torch": torch.__version__,
        "final_vae_psnr": next((r["psnr"] for r in reversed(run.log) if r["stage"] == "vae"), None)
        or start.get("final_vae_psnr"),
        "start_from": start,
        "final_loss": next((r["loss"] for r in reversed(run.log) if r["stage"] == "unet"), None),
        "config": jsonable(asdict(run.config)),
        "note": "trained by synthkit model train; what its pictures are worth is measured by bench/mini_quality.py",
    }


def _asked(data: Path, config: MiniConfig) -> Asked:
    """What a run asks for, as a finished model's synthkit.json records how it was made (jobs.Asked): every value of
    its settings and the fingerprint of the store it learns from."""
    from ..io.store import store_fingerprint

    return Asked(jsonable(asdict(config)), [(str(data), store_fingerprint(data))], _made)


def _made(out: Path) -> dict[str, Any]:
    """A finished model's synthkit.json as jobs.Asked compares it: its settings, and the store it learnt from."""
    record = json.loads((out / "synthkit.json").read_text())
    source = {"path": record.get("data"), "fingerprint": record.get("data_fingerprint")}
    return {"params": record.get("config"), "sources": [source]}


def _instance_codes(
    encoder: InstanceEncoder, latents: torch.Tensor, config: MiniConfig, rows_gen: torch.Generator, noise_gen
) -> torch.Tensor:
    """The conditioning of a batch's instance rows: each row's code of its own clean latent, the batch's mean code in
    `mean_code_prob` of them (DI samples guide against the mean embedding), and Gaussian noise of a std drawn per row
    in [code_noise_min, code_noise] (DI perturbs and interpolates its embeddings; and the noise is the bottleneck)."""
    n, dev = len(latents), latents.device
    codes = encoder(latents)
    use_mean = (torch.rand(n, generator=rows_gen) < config.mean_code_prob).to(dev)
    codes = torch.where(use_mean[:, None, None], codes.mean(0, keepdim=True), codes)
    low, high = config.code_noise_min, config.code_noise
    sigma = (low + torch.rand(n, generator=rows_gen) * (high - low)).to(dev)
    return codes + sigma[:, None, None] * torch.randn(codes.shape, generator=noise_gen, device=dev)


def _start_record(folder: str | None) -> dict[str, Any]:
    """The synthkit.json of the model a run started from (empty when it started from random weights)."""
    if not folder:
        return {}
    record = Path(resolve_model(folder)) / "synthkit.json"
    saved = json.loads(record.read_text()) if record.is_file() else {}
    keep = (
        "command",
        "data_fingerprint",
        "vae_steps",
        "unet_steps",
        "final_vae_psnr",
        "final_loss",
        "seconds",
        "start_from",
    )
    return {"model": folder, **{k: saved[k] for k in keep if k in saved}}


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip half the images left to right (the usual augmentation)."""
    flip = (torch.rand(len(x), generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


@torch.no_grad()
def _latent_scale(vae, images: torch.Tensor, dev: torch.device, autocast, n: int = 4096) -> float:
    """1 / std of the latents the UNet learns on (samples of the VAE's posterior), so that scaled latents have unit
    variance, as LDM chose SD's 0.18215: the variance of the means plus the mean posterior variance, without a draw."""
    pick = torch.linspace(0, len(images) - 1, min(n, len(images))).long().to(dev)
    dists = [vae.encode(_to_unit(images[pick[i : i + 512]])).latent_dist for i in range(0, len(pick), 512)]
    means = torch.cat([d.mean.float() for d in dists])
    variances = torch.cat([d.var.float() for d in dists])
    return float(1 / (means.var() + variances.mean()).sqrt())


@torch.no_grad()
def _encode_all(vae, images: torch.Tensor, dev: torch.device, autocast, batch: int = 512):
    """The latent distribution (mean, std) of every image, once, so that stage 2 never runs the encoder."""
    means, stds = [], []
    for i in range(0, len(images), batch):
        dist = vae.encode(_to_unit(images[i : i + batch])).latent_dist
        means.append(dist.mean.float())
        stds.append(dist.std.float())
    return torch.cat(means), torch.cat(stds)


def _assemble_pipeline(parts: dict[str, Any]):
    from .diffusion import _assemble

    return _assemble(parts)


def _save(parts: dict[str, Any], out: Path, record: dict[str, Any], encoder: InstanceEncoder | None = None) -> None:
    """The pipeline in fp16 safetensors (what ships), with synthkit.json, and the instance encoder beside it
    (ENCODER_FILE: diffusers does not load it; it shows what the codes DI inverts into are)."""
    import copy

    from safetensors.torch import save_file

    pipe = _assemble_pipeline({k: (copy.deepcopy(v).to("cpu") if hasattr(v, "to") else v) for k, v in parts.items()})
    pipe = pipe.to(dtype=torch.float16)

    def write(folder: Path) -> None:
        pipe.save_pretrained(str(folder), safe_serialization=True)
        if encoder is not None:
            weights = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in encoder.state_dict().items()}
            save_file(weights, str(folder / ENCODER_FILE))

    save_folder(out, write, record)


def load_encoder(folder: str | Path, config: MiniConfig, image_size: int) -> InstanceEncoder:
    """The instance encoder a model was trained with (fp32, eval mode), from its folder's ENCODER_FILE."""
    from safetensors.torch import load_file

    encoder = instance_encoder(config, image_size)
    encoder.load_state_dict({k: v.float() for k, v in load_file(str(Path(folder) / ENCODER_FILE)).items()})
    return encoder.eval()


@torch.no_grad()
def _preview(
    parts: dict[str, Any], stage: Stage | None, classes: list[str], config: MiniConfig, dev, path: Path, title: str
) -> None:
    """A grid of prompt samples, a row per class (EMA weights), so a long run can be watched."""
    from ..core.progress import progress
    from ..io.figures import image_grid
    from .diffusion import diffusion_from_pipeline

    unet, text = parts["unet"], parts["text_encoder"]
    backup = None
    if stage is not None and stage.ema:
        backup = {k: [p.detach().clone() for p in m.parameters()] for k, m in stage.modules.items()}
        stage.swap_in_ema()
    try:
        pipe = _assemble_pipeline(parts)
        diffusion = diffusion_from_pipeline(pipe, dev, torch.float32, "preview")
        resolution = diffusion.native_resolution
        per = 8
        rows = []
        final = stage is None  # its own bar; the others are drawn under the UNet stage's
        with progress() if final else contextlib.nullcontext() as bar:
            task = bar.add_task("final preview", total=min(10, len(classes))) if final else None
            for c, name in enumerate(classes[:10]):
                rows.append(_preview_row(diffusion, config, c, name, per, resolution, dev))
                if final:
                    bar.update(task, advance=1)
        with written_whole(path) as tmp:
            image_grid(rows, classes[:10], cell=48, title=f"{path.name.split('.')[0]}: {title}").save(tmp, format="PNG")
    finally:
        if backup is not None:
            for key, module in stage.modules.items():
                for p, b in zip(module.parameters(), backup[key]):
                    p.copy_(b)
        for module in (unet, text):
            module.requires_grad_(True).train()


def _preview_row(diffusion, config: MiniConfig, c: int, name: str, per: int, resolution: int, dev) -> Any:
    """One class's row of the preview: `per` prompt samples at 25 steps, guidance 5."""
    from .diffusion import decode, denoise, encode_text, initial_noise, make_scheduler

    seeds = [derive_seed(config.seed, 3, c, i) for i in range(per)]
    noise = initial_noise(seeds, diffusion.latent_shape(resolution), dev, torch.float32)
    cond = encode_text(diffusion, [config.template.format(**{"class": name})] * per)
    uncond = encode_text(diffusion, [""] * per)
    latents = denoise(diffusion, make_scheduler(diffusion, "model"), noise, cond, uncond, 25, 5.0)
    return decode(diffusion, latents)
