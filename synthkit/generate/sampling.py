"""`synthkit sample`: images from class prompts (optionally img2img from a real store), or from
learned Diffusion Inversion embeddings perturbed and interpolated within their group.

Every sample draws its randomness from its own seed (job seed, global sample index), and shards
split the work at batch boundaries, so shards merged equal an unsharded run and a resumed run
equals an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from rich.progress import Progress, TaskID

from ..core.config import PROMPT, UNCONDS, DIConfig, SamplingConfig, check_choice
from ..core.device import diffusion_dtype, image_bytes, job_device, memory_budget, pick_device
from ..core.errors import UserError
from ..core.jobs import (
    Asked,
    check_destination,
    check_fits,
    check_output,
    check_range,
    check_store_fits,
    parse_shard,
    shard_range,
)
from ..core.meta import Kind, provenance
from ..core.outputs import locked_output
from ..core.paths import partial_path, store_path
from ..core.progress import console, progress
from ..io.store import Store, StoreWriter, store_fingerprint, store_record
from .diffusion import (
    SD_SCHEDULE,
    Diffusion,
    check_resolution,
    decode,
    denoise,
    derive_seed,
    encode_images,
    encode_text,
    img2img_noise,
    img2img_start,
    initial_noise,
    load_diffusion,
    make_scheduler,
    sample_seed,
)
from .inversion import embeddings_record, load_embeddings

# the columns a sampled store holds beside its images and labels: a prompt store's, and a DI store's
_PROMPT_COLUMNS = {"prompt": "str", "seed": "int", "source_index": "int"}
_DI_COLUMNS = {
    "source_index": "int",
    "partner": "int",
    "alpha": "float",
    "noise": "float",
    "seed": "int",
    "group": "int",
}


def read_templates(templates: Sequence[str], prompt_file: Path | None) -> list[str]:
    """--prompt templates, then the non-empty lines of --prompt-file."""
    out = list(templates)
    if prompt_file is not None:
        if not Path(prompt_file).is_file():
            raise UserError(f"prompt file {prompt_file} does not exist")
        out += [line.strip() for line in Path(prompt_file).read_text().splitlines() if line.strip()]
    return out


def check_sizes(config: SamplingConfig, device: str | None, shard: str) -> None:
    """A well-formed shard, and a batch at the sizes asked for within the device's memory budget: refused before
    any work."""
    if shard and shard != "auto":
        parse_shard(shard)
    for value, option, low in (
        (config.resolution, "--resolution", 8),
        (config.save_size, "--save-size", 1),
        (config.guidance, "--guidance", 0),
        (config.steps, "--steps", 1),
    ):
        if value is not None:
            check_range(value, option, low)
    if config.steps is not None and config.steps > SD_SCHEDULE["num_train_timesteps"]:
        raise UserError(
            f"--steps must be at most {SD_SCHEDULE['num_train_timesteps']} (the timesteps the model was trained on), "
            f"got {config.steps}"
        )
    budget = memory_budget(pick_device(device))
    for size, option in ((config.resolution, "--resolution"), (config.save_size, "--save-size")):
        if size:
            check_fits(
                4 * image_bytes(config.batch_size, size),
                budget,
                f"a batch of {config.batch_size} images at {option} {size}",
            )


def run_sample(
    out: Path,
    *,
    templates: Sequence[str] = (),
    prompt_file: Path | None = None,
    embeddings: Sequence[Path] = (),
    only: Path | None = None,
    classes: str | None = None,
    per_class: int = PROMPT.per_class,
    negative: str = "",
    init: Path | None = None,
    strength: float = PROMPT.strength,
    di: DIConfig | None = None,
    config: SamplingConfig | None = None,
    model: str | None = None,
    device: str = "auto",
    shard: str = "",
    overwrite: bool = False,
    resume: bool = False,
    say: Callable[[str], None] = print,
    prompt_from: str | None = None,
) -> Path:
    """`synthkit sample`: the output, the mode and the sizes checked before any work, then DI sampling (with
    `embeddings`) or prompt sampling, sharded as asked (launch.run_sharded). Returns the store written."""
    from ..core.launch import run_sharded
    from ..io.store import merge_stores

    config = config or SamplingConfig()
    inputs = [prompt_file, init, only, model, *embeddings, classes_store(classes)]  # --classes may name a store
    check_destination(out, inputs)
    templates = read_templates(templates, prompt_file)
    _check_mode(embeddings, templates, prompt_from, only, init)
    di = di or DIConfig()
    _check_ranges(di, strength)
    check_sizes(config, None if device == "auto" else device, shard)
    names = None if embeddings else class_list(classes if classes is not None else (str(init) if init else None))
    if names is not None:
        _check_prompt_job(templates, names, per_class, config, out, prompt_from)
    request = _SampleRequest(
        embeddings=embeddings,
        only=only,
        di=di,
        templates=templates,
        names=names,
        per_class=per_class,
        negative=negative,
        init=init,
        strength=strength,
        prompt_from=prompt_from,
        config=config,
        model=model,
        overwrite=overwrite,
        resume=resume,
    )
    return run_sharded(
        request.job,
        Path(out),
        shard,
        device,
        lambda parts, o: merge_stores(parts, o, overwrite=True),
        overwrite=overwrite,
        resume=resume,
        say=say,
        inputs=inputs,
        asked=request.asked,
    )


def _check_mode(
    embeddings: Sequence[Path], templates: Sequence[str], prompt_from: str | None, only: Path | None, init: Path | None
) -> None:
    """Exactly one way of sampling (DI, prompt templates or each init image's text), with the options it needs:
    refused before any work."""
    modes = [
        name
        for name, given in (
            ("--embeddings", embeddings),
            ("--prompt/--prompt-file", templates),
            ("--prompt-from", prompt_from),
        )
        if given
    ]
    if len(modes) > 1:
        raise UserError(
            f"give one of --embeddings (DI sampling), --prompt/--prompt-file (prompt templates) or --prompt-from "
            f"(each init image's own text), not {' and '.join(modes)}"
        )
    if not modes:
        raise UserError(
            "give at least one --prompt template (or --prompt-file), --prompt-from with --init, or --embeddings"
        )
    if only is not None and not embeddings:
        raise UserError("--only picks the embeddings to sample (DI mode): give --embeddings, or drop --only")
    if prompt_from is not None and init is None:
        raise UserError("--prompt-from takes each --init image's own text as its prompt: give --init STORE")


def _check_ranges(di: DIConfig, strength: float) -> None:
    """DI's interpolation, noise and eta, and img2img's strength, each within its range: refused before any work."""
    for value, option, low in (
        (di.interp, "--interp", None),
        (di.noise, "--noise", 0),
        (di.eta, "--eta", 0),
        (strength, "--strength", 0),
    ):
        check_range(value, option, low)


def _check_prompt_job(
    templates: Sequence[str],
    names: Sequence[str],
    per_class: int,
    config: SamplingConfig,
    out: Path,
    prompt_from: str | None,
) -> None:
    """A prompt-sampling job's store fits on disk and its prompts can be planned: refused before the model loads."""
    smallest = config.save_size or config.resolution or 8  # the model's own size is not known before loading it
    check_store_fits(per_class * len(names), smallest, out, f"--per-class {per_class:,} of {len(names)} classes")
    prompt_plan(templates if prompt_from is None else ["{class}"], names, per_class)  # its checks, before any work


@dataclass(frozen=True)
class _SampleRequest:
    """A checked `synthkit sample` request: what each shard's job samples (`job`, DI sampling with embeddings, else
    prompt sampling), and what the whole job asks for (`asked`), for launch.run_sharded."""

    embeddings: Sequence[Path]
    only: Path | None
    di: DIConfig
    templates: list[str]
    names: list[str] | None
    per_class: int
    negative: str
    init: Path | None
    strength: float
    prompt_from: str | None
    config: SamplingConfig
    model: str | None
    overwrite: bool
    resume: bool

    @property
    def prompt_model(self) -> str:
        """The model prompt sampling loads: the one asked, else synthkit's default."""
        from ..core.config import DEFAULT_MODEL

        return self.model or DEFAULT_MODEL

    def job(self, path: Path, part: str, dev: str) -> None:
        """Sample shard `part` of the job into `path` on device `dev`."""
        if self.embeddings:
            sample_embeddings(
                path,
                list(self.embeddings),
                self.di,
                self.config,
                model=self.model,
                device=dev,
                shard=part,
                overwrite=self.overwrite,
                resume=self.resume,
                only=self.only,
            )
        else:
            sample_prompts(
                path,
                self.prompt_model,
                self.templates,
                self.names,
                self.per_class,
                self.config,
                negative=self.negative,
                init=self.init,
                strength=self.strength,
                device=dev,
                shard=part,
                overwrite=self.overwrite,
                resume=self.resume,
                prompt_from=self.prompt_from,
            )

    def asked(self) -> Asked:
        """The whole job's output (shard auto), as merged or written unsharded."""
        if self.embeddings:
            return di_asked("", list(self.embeddings), self.di, self.config, self.model, self.only)
        return prompt_asked(
            "",
            self.prompt_model,
            self.templates,
            self.names,
            self.per_class,
            self.config,
            self.negative,
            self.init,
            self.strength,
            self.prompt_from,
        )


def batch_slices(total: int, batch: int, shard: str) -> list[slice]:
    """This shard's batches of the job's `total` samples; shards split at batch boundaries."""
    n_batches = -(-total // batch)
    first, stop = shard_range(n_batches, shard)
    return [slice(b * batch, min((b + 1) * batch, total)) for b in range(first, stop)]


def images_advance(bar: Progress, task: TaskID, count: int) -> Callable[[float], None]:
    """The bar's advance by a batch of `count` images as its sampling goes (denoise's `advance`: a share of the run
    per step), so that the bar counts images within a batch too: `--per-class 1` is one batch of 10 images."""
    return lambda share: bar.advance(task, count * share)


def pending(slices: list[slice], done: int) -> Iterator[slice]:
    """The batches not yet in the store: a resumed job skips the first `done` samples."""
    end = 0
    for part in slices:
        end += part.stop - part.start
        if end > done:
            yield part


def class_list(classes: str | None) -> list[str]:
    """--classes: CIFAR-10's by default, the classes of a store (name or path), or comma-separated names."""
    from ..core.config import CIFAR10_CLASSES

    if classes is None:
        return list(CIFAR10_CLASSES)
    check_names(classes)
    path = classes_store(classes)
    if path is not None:
        with Store(path) as s:
            return list(s.classes)
    return [c.strip() for c in classes.split(",")]


def classes_store(classes: str | None) -> Path | None:
    """The store --classes names (a name or path of an existing .h5, read for its classes), else None (names)."""
    if not classes or "," in classes or not classes.strip():
        return None
    path = store_path(classes)
    return path if path.suffix == ".h5" and path.exists() else None


def check_names(classes: str) -> None:
    """--classes as names: none empty (a stray comma) and none blank."""
    if any(not part.strip() for part in classes.split(",")):
        raise UserError(
            f"--classes '{classes}' has an empty class name (a stray comma?): give names separated by single commas"
        )


def prompt_plan(templates: Sequence[str], classes: Sequence[str], per_class: int) -> tuple[list[str], np.ndarray]:
    """Prompts and labels of every sample, class by class; templates take turns, '{class}' becomes the name (with
    spaces for underscores, as in CIFAR-100's names). A template without '{class}' would give every class the same
    prompt, so that the labels meant nothing: refused when there is more than one class."""
    if not templates:
        raise UserError("give at least one --prompt template (or --prompt-file)")
    blind = [t for t in templates if "{class}" not in t]
    if blind and len(classes) > 1:
        raise UserError(
            f"the template '{blind[0]}' has no {{class}}: every class would get the same prompt; "
            "write it like 'a photo of a {class}'"
        )
    prompts, labels = [], []
    for c, name in enumerate(classes):
        for k in range(per_class):
            prompts.append(templates[k % len(templates)].replace("{class}", name.replace("_", " ")))  # aquarium_fish
            labels.append(c)
    return prompts, np.array(labels, dtype=np.int64)


def _open_generator(model: str, config: SamplingConfig, device: str | None) -> tuple[Diffusion, int]:
    dev = job_device(device)
    diffusion = load_diffusion(model, dev, diffusion_dtype(dev, config.dtype))
    resolution = config.resolution or diffusion.native_resolution
    check_resolution(resolution, diffusion)
    make_scheduler(diffusion, config.scheduler)
    return diffusion, resolution


def prompt_config(config: SamplingConfig) -> SamplingConfig:
    """Prompt sampling's settings with what was left None filled in: PromptConfig's steps and guidance."""
    return replace(
        config,
        steps=config.steps or PROMPT.steps,
        guidance=PROMPT.guidance if config.guidance is None else config.guidance,
    )


def prompt_params(
    config: SamplingConfig,
    model: str,
    templates: Sequence[str],
    classes: Sequence[str],
    per_class: int,
    negative: str,
    init: Path | None,
    strength: float,
    prompt_from: str | None,
) -> dict:
    """The params a prompt-sampling store records: its settings (prompt_config) and what it was asked; the resolution
    is the one asked (None until the model's own is known)."""
    return asdict(prompt_config(config)) | {
        "model": model,
        "templates": list(templates),
        "prompt_from": prompt_from,
        "classes": list(classes),
        "per_class": per_class,
        "negative": negative,
        "init": str(init) if init else None,
        "strength": strength if init else None,
    }


def prompt_asked(
    shard: str,
    model: str,
    templates: Sequence[str],
    classes: Sequence[str],
    per_class: int,
    config: SamplingConfig,
    negative: str,
    init: Path | None,
    strength: float,
    prompt_from: str | None,
) -> Asked:
    """What a prompt-sampling job asks for, as its finished store records how it was made (jobs.Asked): its params
    (without the resolution when the model's own is asked: it is known once the model is loaded), its shard, and
    the init store's fingerprint."""
    params = prompt_params(config, model, templates, classes, per_class, negative, init, strength, prompt_from)
    if params["resolution"] is None:
        del params["resolution"]
    inputs = [(str(init), store_fingerprint(init))] if init is not None else []
    return Asked(params | {"shard": shard}, inputs, store_record)


@locked_output("out")
def sample_prompts(
    out: Path,
    model: str,
    templates: Sequence[str],
    classes: Sequence[str],
    per_class: int,
    config: SamplingConfig,
    negative: str = "",
    init: Path | None = None,
    strength: float = PROMPT.strength,
    device: str | None = None,
    shard: str = "",
    overwrite: bool = False,
    resume: bool = False,
    prompt_from: str | None = None,
) -> Path:
    """Generate per_class images of every class from prompt templates (img2img from `init` if given). With
    `prompt_from` (a text column of the init store, e.g. `caption` from synthkit caption), each sample's prompt is
    its init image's own text, and sample k of a class takes the class's (k mod n)-th image, so that every image
    is used as evenly as the counts allow (the original study made one Stable Diffusion image per real image)."""
    out = Path(out)

    def asked() -> Asked:
        return prompt_asked(shard, model, templates, classes, per_class, config, negative, init, strength, prompt_from)

    if _already_sampled(out, [init, model], asked, config, device, shard, overwrite, resume):
        return out
    if prompt_from is not None and (init is None or templates):
        raise UserError("--prompt-from takes each --init image's own text as its prompt: give --init, and no --prompt")
    params = prompt_params(config, model, templates, classes, per_class, negative, init, strength, prompt_from)
    config = prompt_config(config)
    prompts, labels = prompt_plan(templates if prompt_from is None else ["{class}"], classes, per_class)
    if init is not None and not 0 < strength <= 1:
        raise UserError(f"--strength must be in (0, 1], got {strength}")
    if init is not None:
        img2img_start(config.steps, strength)  # its check, before any work
    init_store = Store(init) if init is not None else None
    try:
        init_members, chosen, prompts = _init_plan(init_store, init, classes, per_class, prompt_from, prompts)
        diffusion, resolution = _open_generator(model, config, device)
        params["resolution"] = resolution
        sources = [{"path": str(init), "fingerprint": init_store.fingerprint}] if init_store else []
        meta = provenance(Kind.SD, params, sources) | {
            "model": model,
            "device": str(diffusion.device),
            "shard": shard,
            "prompts": f"each init image's {prompt_from}" if prompt_from else "templates: " + "; ".join(templates),
        }
        sampler = _PromptSampler(
            diffusion, resolution, config, prompts, labels, negative, strength, init_store, init_members, chosen
        )
        size = config.save_size or resolution
        _write_samples(
            out,
            sampler,
            len(prompts),
            config.batch_size,
            shard,
            classes=classes,
            image_shape=(size, size),
            meta=meta,
            columns=_PROMPT_COLUMNS,
            overwrite=overwrite,
            resume=resume,
        )
    finally:
        if init_store is not None:
            init_store.close()
    return out


def _already_sampled(
    out: Path,
    inputs: Sequence[str | Path | None],
    asked: Callable[[], Asked],
    config: SamplingConfig,
    device: str | None,
    shard: str,
    overwrite: bool,
    resume: bool,
) -> bool:
    """Whether `out` is already sampled as asked (jobs.check_output); if not, the sizes are checked before any work."""
    if check_output(out, [partial_path(out)], overwrite, resume, inputs=inputs, asked=asked):
        return True
    check_sizes(config, device, shard)
    return False


def _init_plan(
    init_store: Store | None,
    init: Path | None,
    classes: Sequence[str],
    per_class: int,
    prompt_from: str | None,
    prompts: list[str],
) -> tuple[list[np.ndarray] | None, np.ndarray | None, list[str]]:
    """The init store's rows of each class, the row each sample takes with `prompt_from` (else None), and the
    prompts: each chosen image's own text with `prompt_from`, else `prompts` as planned. Without an init store, no
    rows."""
    if init_store is None:
        return None, None, prompts
    missing = [c for c in classes if c not in init_store.classes]
    if missing:
        raise UserError(f"init store {init} has no class {', '.join(missing)}")
    init_labels = init_store.labels
    init_members = [np.flatnonzero(init_labels == init_store.classes.index(c)) for c in classes]
    if prompt_from is None:
        return init_members, None, prompts
    if prompt_from not in init_store.column_names or init_store.column_kind(prompt_from) != "str":
        raise UserError(
            f"--prompt-from {prompt_from}: init store {init} has no text column of that name "
            f"(it has: {', '.join(init_store.column_names) or 'none'}); make captions with synthkit caption"
        )
    chosen = np.array(
        [init_members[c][k % len(init_members[c])] for c in range(len(classes)) for k in range(per_class)]
    )
    text = init_store.column(prompt_from)
    return init_members, chosen, [str(text[row]) for row in chosen]


_Batch = tuple[np.ndarray, np.ndarray, dict[str, Any]]  # a batch's images, labels and columns, as StoreWriter.append


class _Sampler(Protocol):
    """A sampling job's batches, as _write_samples draws them."""

    def start(self) -> None:
        """Prepare what every batch shares, once the store is open and not yet complete."""

    def batch(self, part: slice, advance: Callable[[float], None]) -> _Batch:
        """Sample the job's samples `part`, advancing the progress bar as denoising goes."""


def _write_samples(
    out: Path,
    sampler: _Sampler,
    n_samples: int,
    batch_size: int,
    shard: str,
    **store: Any,
) -> None:
    """Write this shard's batches of the job's `n_samples` into `out` (StoreWriter with the `store` options),
    skipping those a resumed store holds, under a progress bar counting images."""
    slices = batch_slices(n_samples, batch_size, shard)
    total = sum(s.stop - s.start for s in slices)
    with StoreWriter(out, total=total, shard=shard, **store) as writer, progress() as bar:
        if writer.complete:
            return
        task = bar.add_task("sample", total=total, completed=writer.done)
        sampler.start()
        for part in pending(slices, writer.done):
            images, labels, columns = sampler.batch(part, images_advance(bar, task, part.stop - part.start))
            writer.append(images, labels, **columns)
            bar.update(task, completed=writer.done)


@dataclass
class _PromptSampler:
    """Prompt sampling's batches: each sample from its own seed, from noise or (img2img) from an init image."""

    diffusion: Diffusion
    resolution: int
    config: SamplingConfig
    prompts: list[str]
    labels: np.ndarray
    negative: str
    strength: float
    init_store: Store | None
    init_members: list[np.ndarray] | None
    chosen: np.ndarray | None
    uncond_one: torch.Tensor | None = None

    def start(self) -> None:
        """Encode the negative prompt once: every sample's unconditional input."""
        self.uncond_one = encode_text(self.diffusion, [self.negative])

    def batch(self, part: slice, advance: Callable[[float], None]) -> _Batch:
        """Sample the job's samples `part`: their prompts encoded, then denoised from noise or from init images."""
        count = part.stop - part.start
        index = np.arange(part.start, part.stop)
        seeds = [sample_seed(self.config.seed, i) for i in index]
        cond = encode_text(self.diffusion, [self.prompts[i] for i in index])
        uncond = self.uncond_one.expand(count, -1, -1)
        scheduler = make_scheduler(self.diffusion, self.config.scheduler)
        source_index = self._init_rows(index, seeds)
        if self.init_members is None:
            shape = self.diffusion.latent_shape(self.resolution)
            noise = initial_noise(seeds, shape, self.diffusion.device, self.diffusion.dtype)
            latents = denoise(
                self.diffusion, scheduler, noise, cond, uncond, self.config.steps, self.config.guidance, advance=advance
            )
        else:
            latents = self._img2img(scheduler, source_index, seeds, cond, uncond, advance)
        columns = {"prompt": [self.prompts[i] for i in index], "seed": seeds, "source_index": source_index}
        return decode(self.diffusion, latents, self.config.save_size), self.labels[index], columns

    def _init_rows(self, index: np.ndarray, seeds: list[int]) -> np.ndarray:
        """Each sample's init image (its init store row; -1 without one): the one chosen for it with prompt_from,
        else one of its class drawn by its own seed."""
        source_index = np.full(len(index), -1, dtype=np.int64)
        if self.init_members is None:
            return source_index
        for k, (i, s) in enumerate(zip(index, seeds)):
            members = self.init_members[self.labels[i]]
            source_index[k] = (
                self.chosen[i] if self.chosen is not None else members[np.random.default_rng(s).integers(len(members))]
            )
        return source_index

    def _img2img(
        self,
        scheduler: Any,
        source_index: np.ndarray,
        seeds: list[int],
        cond: torch.Tensor,
        uncond: torch.Tensor,
        advance: Callable[[float], None],
    ) -> torch.Tensor:
        """The latents of the init images, drawn from the VAE's posterior and noised to `strength`, then denoised
        from there (img2img)."""
        config, diffusion = self.config, self.diffusion
        start = img2img_start(config.steps, self.strength) * scheduler.order
        scheduler.set_timesteps(config.steps, device=diffusion.device)
        mean, std = encode_images(diffusion, self.init_store.images(source_index), self.resolution)
        posterior, noise = img2img_noise(seeds, tuple(mean.shape[1:]), diffusion.device, diffusion.dtype)
        t0 = scheduler.timesteps[start].repeat(len(seeds))
        latents = scheduler.add_noise(mean + std * posterior, noise, t0)
        return denoise(
            diffusion,
            scheduler,
            latents,
            cond,
            uncond,
            config.steps,
            config.guidance,
            start_step=start,
            advance=advance,
        )


def group_members(groups: torch.Tensor) -> dict[int, np.ndarray]:
    """Row indices of every group's members, computed once per job."""
    groups_np = groups.numpy()
    order = np.argsort(groups_np, kind="stable")
    keys, starts = np.unique(groups_np[order], return_index=True)
    return {int(k): rows for k, rows in zip(keys, np.split(order, starts[1:]))}


def choose_partners(
    groups: torch.Tensor,
    members: dict[int, np.ndarray],
    rows: np.ndarray,
    per_image: int,
    seed: int,
    source: np.ndarray,
) -> np.ndarray:
    """(len(rows), per_image) interpolation partners: as the official code, per_image distinct members of the
    image's own (class-pure) group, the image itself included, with replacement only in groups smaller than
    per_image. Seeded by the image's store row, so a partner depends neither on batch, shard nor file order."""
    out = np.empty((len(rows), per_image), dtype=np.int64)
    for k, i in enumerate(rows):
        mates = members[int(groups[i])]
        rng = np.random.default_rng([int(seed) % 2**63, int(source[i])])
        out[k] = rng.choice(mates, size=per_image, replace=len(mates) < per_image)
    return out


def perturb(
    embeddings: torch.Tensor, rows: np.ndarray, partners: np.ndarray, seeds: Sequence[int], interp: float, noise: float
) -> torch.Tensor:
    """c = e_i + interp (e_j - e_i) + noise * eps for each sample (row i, partner j); eps from a stream of its
    own, derived from the sample's seed (never another sample's latent noise)."""
    out = []
    for i, j, s in zip(rows, partners, seeds):
        eps = torch.randn(embeddings.shape[1:], generator=torch.Generator().manual_seed(derive_seed(s, 1)))
        out.append(embeddings[i] + interp * (embeddings[j] - embeddings[i]) + noise * eps)
    return torch.stack(out)


def group_means(embeddings: torch.Tensor, groups: torch.Tensor) -> dict[int, torch.Tensor]:
    """The mean embedding of every group: the unconditional input of --uncond group."""
    return {int(g): embeddings[groups == g].mean(0) for g in torch.unique(groups)}


def unconditional(
    mode: str, diffusion: Diffusion, embeddings: torch.Tensor, groups: torch.Tensor, labels: torch.Tensor
) -> tuple[Callable[[np.ndarray], torch.Tensor], str]:
    """The unconditional input of guidance for rows of the embeddings, and a line saying what it is.

    mixed (default): the mean of every loaded embedding, all classes together. The official code uses the
    mean of its group of 100 consecutive, class-mixed training images; synthkit's groups are class-pure, so
    their mean would be the class mean, and guidance would push each sample away from its own class.
    group: the mean of the image's own group. empty: the empty prompt, padded to the embeddings' token count
    as the official code's non-averaged branch does."""
    if mode == "mixed":
        mean = embeddings.mean(0)
        n_classes = len(torch.unique(labels))
        return (
            lambda rows: mean.expand(len(rows), -1, -1)
        ), f"mixed: the mean of all {len(embeddings)} embeddings ({n_classes} classes)"
    if mode == "group":
        means = group_means(embeddings, groups)
        return (
            lambda rows: torch.stack([means[int(groups[r])] for r in rows])
        ), "group: the mean of the image's own group"
    empty = encode_text(diffusion, [""], length=embeddings.shape[1]).float().cpu()
    return (lambda rows: empty.expand(len(rows), -1, -1)), f"empty: the empty prompt ({embeddings.shape[1]} tokens)"


def _recorded_source(path: Path, source: dict) -> Path | None:
    """The file a store's recorded source names: the path as recorded, tried beside the store first (so the same
    command works from any folder), then from the current folder; only a file with the recorded fingerprint."""
    recorded = Path(source["path"])
    tries = [recorded] if recorded.is_absolute() else [path.parent / recorded, recorded, path.parent / recorded.name]
    for candidate in tries:
        if candidate.is_file():
            with Store(candidate) as store:
                if store.fingerprint == source.get("fingerprint"):
                    return candidate
    return None


def inverted_rows(path: Path, inverted: str, depth: int = 8) -> np.ndarray | None:
    """The row of each image of store `path` in the store whose fingerprint is `inverted`: the store itself, or
    a subset of it (or of a subset of it...) made by `synthkit subset`, followed through each one's `parent_row`
    column and its recorded source; None when the chain does not lead there. Every recorded row is checked: it must
    lie in the parent and hold an image of the same class."""
    with Store(path) as store:
        if store.fingerprint == inverted:
            return np.arange(len(store))
        sources = store.meta.get("sources") or [{}]
        if depth == 0 or "parent_row" not in store.column_names or not sources[0].get("path"):
            return None
        rows, labels = store.column("parent_row").astype(np.int64), store.labels
        names = store.classes
    parent = _recorded_source(Path(path), sources[0])
    if parent is None:
        return None
    with Store(parent) as source:
        bad = (rows < 0) | (rows >= len(source))
        if bad.any():
            raise UserError(
                f"{path} records parent row {rows[bad][0]} of {parent}, which has {len(source)} images: "
                "its parent_row column is not synthkit subset's"
            )
        wrong = [source.classes[c] for c in source.labels[rows]] != [names[c] for c in labels]
    if wrong:
        raise UserError(f"{path} records parent rows of {parent} that hold other classes than its own images")
    above = inverted_rows(parent, inverted, depth - 1)
    return None if above is None else above[rows]


def restrict_to(tensors: dict[str, torch.Tensor], emb_meta: dict, only: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The embeddings of the images of store `only` (the inverted store itself, or a subset cut from it by
    `synthkit subset`), regrouped as inverting `only` would group them (class-pure runs of the inversion's group
    size, in its row order), with its rows as their source rows; and `only`'s provenance record. So a smaller
    store of a sample-complexity sweep reuses the larger one's inversion, drawing partners and the unconditional
    mean from its own images only."""
    from .inversion import plan_groups

    inverted = emb_meta["sources"][0]["fingerprint"]
    with Store(only) as store:
        if store.classes != emb_meta["classes"]:
            raise UserError(
                f"--only {only} has classes {', '.join(store.classes)}, not the embeddings' "
                f"{', '.join(emb_meta['classes'])}"
            )
        labels, record = store.labels, {"path": str(only), "fingerprint": store.fingerprint, "count": len(store)}
    parent = inverted_rows(Path(only), inverted)
    if parent is None:
        raise UserError(
            f"--only {only}: its images are not the ones inverted in the embeddings given (it is neither "
            "the inverted store nor a subset of it, or of a subset of it, made by synthkit subset)"
        )
    index_of = {int(row): k for k, row in enumerate(tensors["source_index"])}
    missing = sum(int(row) not in index_of for row in parent)
    if missing:
        raise UserError(f"--only {only}: {missing} of its {len(parent)} images have no embeddings in the files given")
    take = torch.tensor([index_of[int(row)] for row in parent], dtype=torch.long)
    group = torch.empty(len(parent), dtype=torch.long)
    for _, rows in plan_groups(labels, range(len(store.classes)), emb_meta["params"]["group_size"]):
        group[rows] = int(rows[0])  # a group is named by its first row, as invert names them
    restricted = {
        "embeddings": tensors["embeddings"][take],
        "label": tensors["label"][take],
        "group": group,
        "source_index": torch.arange(len(parent)),
    }
    return restricted, record | {"embeddings": emb_meta["sources"]}


def di_settings(di: DIConfig, config: SamplingConfig, model: str | None, emb_meta: dict) -> tuple[SamplingConfig, str]:
    """DI sampling's settings with what was left None filled in: DIConfig's steps, guidance and save size (else the
    size of the images inverted), and the inversion's resolution and model (its record `emb_meta`)."""
    config = replace(
        config,
        steps=config.steps or di.steps,
        guidance=di.guidance if config.guidance is None else config.guidance,
        save_size=config.save_size or di.save_size or emb_meta["image_size"],
        resolution=config.resolution or emb_meta["resolution"],
    )
    return config, model or emb_meta["model"]


def di_params(
    di: DIConfig, config: SamplingConfig, model: str, embedding_files: Sequence[Path], only: Path | None
) -> dict:
    """The params a DI store records: the sampling settings (di_settings's) and what it was asked."""
    return (
        asdict(di)
        | asdict(config)
        | {
            "model": model,
            "embeddings": [str(p) for p in embedding_files],
            "resolution": config.resolution,
            "only": str(only) if only else None,
        }
    )


def di_asked(
    shard: str,
    embedding_files: Sequence[Path],
    di: DIConfig,
    config: SamplingConfig,
    model: str | None,
    only: Path | None,
) -> Asked:
    """What a DI sampling job asks for, as its finished store records how it was made (jobs.Asked): its params, its
    shard, and the fingerprint of the store sampled: `only`, else the one each embeddings file inverted (the
    embeddings files have none of their own)."""
    records = [embeddings_record(p) for p in embedding_files]
    config, model = di_settings(di, config, model, records[0])
    if only is not None:
        inputs = [(str(only), store_fingerprint(only))]
    else:
        inputs = [(str(p), r["sources"][0].get("fingerprint")) for p, r in zip(embedding_files, records)]
    return Asked(di_params(di, config, model, embedding_files, only) | {"shard": shard}, inputs, store_record)


@locked_output("out")
def sample_embeddings(
    out: Path,
    embedding_files: Sequence[Path],
    di: DIConfig | None = None,
    config: SamplingConfig | None = None,
    model: str | None = None,
    device: str | None = None,
    shard: str = "",
    overwrite: bool = False,
    resume: bool = False,
    only: Path | None = None,
) -> Path:
    """Generate di.per_image samples from every learned embedding (Diffusion Inversion sampling); with `only`, from
    those of that store's images alone (see restrict_to). What `config` leaves None takes DI's defaults: DIConfig's
    steps, guidance and save size (the training images' size)."""
    di, config = di or DIConfig(), config or SamplingConfig()

    def asked() -> Asked:
        return di_asked(shard, embedding_files, di, config, model, only)

    inputs = [*embedding_files, model, only]
    if _already_sampled(Path(out), inputs, asked, config, device, shard, overwrite, resume):
        return Path(out)
    check_choice(di.uncond, UNCONDS, "--uncond")
    tensors, emb_meta, sources = _embeddings_to_sample(embedding_files, only)
    check_store_fits(
        len(tensors["embeddings"]) * di.per_image,
        config.save_size or di.save_size or emb_meta["image_size"],
        out,
        f"--per-image {di.per_image:,} of {len(tensors['embeddings']):,} embeddings",
    )
    config, model = di_settings(di, config, model, emb_meta)
    diffusion, resolution = _open_generator(model, config, device)
    if diffusion.hidden_size != emb_meta["hidden"]:
        raise UserError(
            f"the embeddings have hidden size {emb_meta['hidden']} but model {model} expects {diffusion.hidden_size}: "
            "sample with the model they were inverted with"
        )
    embeddings, groups, labels = tensors["embeddings"].float(), tensors["group"], tensors["label"]
    uncond_of, uncond_note = _di_unconditional(di.uncond, diffusion, embeddings, groups, labels)
    params = di_params(di, config, model, embedding_files, only)
    meta = provenance(Kind.INV, params, sources) | {
        "model": model,
        "embeddings_model": emb_meta["model"],
        "uncond": uncond_note,
        "device": str(diffusion.device),
        "shard": shard,
        "real_images": len(embeddings),
    }
    source = tensors["source_index"].numpy()
    sampler = _DISampler(
        di, config, diffusion, resolution, embeddings, groups, labels, source, group_members(groups), uncond_of
    )
    _write_samples(
        out,
        sampler,
        len(embeddings) * di.per_image,
        config.batch_size,
        shard,
        classes=emb_meta["classes"],
        image_shape=(config.save_size, config.save_size),
        meta=meta,
        columns=_DI_COLUMNS,
        overwrite=overwrite,
        resume=resume,
    )
    return Path(out)


def _embeddings_to_sample(
    embedding_files: Sequence[Path], only: Path | None
) -> tuple[dict[str, torch.Tensor], dict, list[dict]]:
    """The embeddings files' tensors and record, with the sources the store will record; with `only`, those of its
    images alone (restrict_to), with it as the source."""
    tensors, emb_meta = load_embeddings(embedding_files)
    sources = emb_meta["sources"]
    if only is not None:
        tensors, record = restrict_to(tensors, emb_meta, Path(only))
        sources = [record]
    return tensors, emb_meta, sources


def _di_unconditional(
    mode: str, diffusion: Diffusion, embeddings: torch.Tensor, groups: torch.Tensor, labels: torch.Tensor
) -> tuple[Callable[[np.ndarray], torch.Tensor], str]:
    """The unconditional input of guidance and its line (see unconditional), with a note when a mixed mean is
    taken over one class only, unlike the official code's."""
    uncond_of, uncond_note = unconditional(mode, diffusion, embeddings, groups, labels)
    if mode == "mixed" and len(torch.unique(labels)) == 1:
        console.print(
            "note: the embeddings hold one class, so the mixed unconditional input is that class's mean; "
            "give every class's file for the official class-mixed mean",
            highlight=False,
        )
    return uncond_of, uncond_note


@dataclass
class _DISampler:
    """DI sampling's batches: each sample an embedding interpolated towards a partner of its group and perturbed,
    from its own seed (job seed, source row, k-th sample of the image)."""

    di: DIConfig
    config: SamplingConfig
    diffusion: Diffusion
    resolution: int
    embeddings: torch.Tensor
    groups: torch.Tensor
    labels: torch.Tensor
    source: np.ndarray
    members: dict[int, np.ndarray]
    uncond_of: Callable[[np.ndarray], torch.Tensor]

    def start(self) -> None:
        """Nothing to prepare: the unconditional input is per row (uncond_of)."""

    def batch(self, part: slice, advance: Callable[[float], None]) -> _Batch:
        """Sample the job's samples `part`: sample i is the (i mod per_image)-th of embedding i // per_image."""
        di, config, diffusion, source = self.di, self.config, self.diffusion, self.source
        count = part.stop - part.start
        sample_index = np.arange(part.start, part.stop)
        rows = sample_index // di.per_image
        nth = sample_index % di.per_image
        images, image_of_sample = np.unique(rows, return_inverse=True)  # each image's partners drawn once
        partners = choose_partners(self.groups, self.members, images, di.per_image, config.seed, source)
        partners = partners[image_of_sample, nth]
        seeds = [derive_seed(config.seed, source[r], k) for r, k in zip(rows, nth)]
        cond = perturb(self.embeddings, rows, partners, seeds, di.interp, di.noise)
        noise = initial_noise(seeds, diffusion.latent_shape(self.resolution), diffusion.device, diffusion.dtype)
        latents = denoise(
            diffusion,
            make_scheduler(diffusion, config.scheduler),
            noise,
            cond.to(diffusion.device, diffusion.dtype),
            self.uncond_of(rows).to(diffusion.device, diffusion.dtype),
            config.steps,
            config.guidance,
            eta=di.eta,
            seeds=seeds,
            advance=advance,
        )
        columns = {
            "source_index": source[rows],
            "partner": source[partners],
            "alpha": np.full(count, di.interp),
            "noise": np.full(count, di.noise),
            "seed": seeds,
            "group": self.groups.numpy()[rows],
        }
        return decode(diffusion, latents, config.save_size), self.labels.numpy()[rows], columns
