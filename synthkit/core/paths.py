"""The study's working layout: stores in data/, classifiers and embeddings in models/, results in results/; and the
files beside an output: where it lives while being written (`.partial`), its writer's lock (`.lock`), the resumable
state of a long job, its log and preview, its shards."""

from __future__ import annotations

from pathlib import Path

from .errors import UserError

DATA_DIR = Path("data")
MODELS_DIR = Path("models")
RESULTS_DIR = Path("results")
MINI = "mini"  # the name --model takes for the shipped miniature generator
MINI_ASSET = Path(__file__).parent.parent / "assets" / "mini-sd"  # synthkit/assets, beside core/
PARTIAL_SUFFIX = ".partial"

# Names inside a results folder, written by one module and read by the report (the Makefile spells the same names).
ACCURACY_CSV = "accuracy.csv"  # evaluate: one row per classifier and test store
ACCURACY_MD = "accuracy.md"  # evaluate: the table rewritten from accuracy.csv
CONFUSION_DIR = "confusion"  # evaluate: a figure per classifier
GRIDS_DIR = "grids"  # show, by make: a sample grid per store
SWEEP_DIR = "sweep"  # make sweep: its evaluation folder
FIDELITY_DIR = "fidelity"
GRADCAM_DIR = "gradcam"
VANISH_DIR = "vanish"  # the study's stores
GEOMETRY_DIR = "geometry"  # make geometry: the scene stores
VANISH_GT_DIR = "vanish-gt"  # vanish-score's default
VANISH_YUD_DIR = "vanish-yud"  # make's vanish-score on York Urban, which the report reads
SUMMARY_JSON = "summary.json"  # fidelity, gradcam and vanish: their summary, written last
PAIRS_JSON = "pairs.json"  # vanish --sources: each sample against its source
GT_SCORES_JSON = "gt_scores.json"  # vanish-score
JUDGE_JSON = "judge.json"  # judge --out, as make writes it


def resolve_model(name: str) -> str:
    """A --model value as diffusers loads it: `mini` is the model shipped in synthkit/assets/mini-sd."""
    if str(name) != MINI:
        return str(name)
    if not (MINI_ASSET / "model_index.json").is_file():
        raise UserError(f"--model mini: the shipped model is missing from {MINI_ASSET} (a broken install?)")
    return str(MINI_ASSET)


def shadowed_mini(name: str) -> str | None:
    """The note for `--model mini` given where a folder `mini` also exists: the name always means the shipped model,
    so the local folder is reached as ./mini. None otherwise."""
    if str(name) != MINI or not Path(MINI).is_dir():
        return None
    return "--model mini is the miniature shipped with synthkit, not the folder ./mini here: pass ./mini for that one"


def store_path(name: str | Path) -> Path:
    """A bare name means data/NAME.h5; anything with a slash or a suffix is a path as given."""
    text = str(name)
    if not text.strip():
        raise UserError("an empty store name was given: give a name (data/NAME.h5) or a path")
    if "/" in text or "\\" in text or Path(text).suffix:
        return Path(text)
    return DATA_DIR / f"{text}.h5"


def store_paths(names: str | list[str]) -> list[Path]:
    """Resolve a comma-separated list (or a list of such lists) of store names or paths."""
    items = [names] if isinstance(names, str) else list(names)
    out = []
    for item in items:
        parts = [part.strip() for part in str(item).split(",")]
        if not all(parts):
            raise UserError(
                f"'{item}' has an empty store name (a stray or trailing comma?): "
                "give names or paths separated by single commas, e.g. real,inv"
            )
        out.extend(store_path(part) for part in parts)
    return out


NO_STORE = "none"


def optional_store(name: str | None, default: str) -> tuple[Path | None, bool]:
    """The store an option such as train --test names: none for no store, a name or path, else data/`default`.h5
    when that exists (else None); and whether it is that default, not named (the caller applies it only where it
    fits)."""
    if name == NO_STORE:
        return None, False
    if name:
        return store_path(name), False
    path = store_path(default)
    return (path, True) if path.exists() else (None, False)


def _beside(out: str | Path, ending: str, keep_suffix: bool = True) -> Path:
    """A side file named from the whole output name (only a .safetensors ending dropped), so that m.0 and m.1 do not
    share one."""
    out = Path(out)
    name = out.name if keep_suffix else out.name.removesuffix(".safetensors")
    return out.with_name(name + ending)


def partial_path(out: str | Path) -> Path:
    """Where `out` lives while it is being written: data/real.h5 -> data/real.h5.partial."""
    return _beside(out, PARTIAL_SUFFIX)


def lock_path(out: str | Path) -> Path:
    """The writer lock beside `out`: data/real.h5 -> data/real.h5.lock."""
    return _beside(out, ".lock")


def train_state_path(out: str | Path) -> Path:
    """A classifier's resumable training state: models/m.safetensors -> models/m.train-state.safetensors."""
    return _beside(out, ".train-state.safetensors", keep_suffix=False)


def train_log_path(out: str | Path) -> Path:
    """A classifier's JSON-lines log: models/m.safetensors -> models/m.log.jsonl."""
    return _beside(out, ".log.jsonl", keep_suffix=False)


def invert_state_dir(out: str | Path) -> Path:
    """An inversion's resumable state: models/inv/cat.safetensors -> models/inv/cat.invert-state/."""
    return _beside(out, ".invert-state", keep_suffix=False)


def preview_path(embeddings: str | Path) -> Path:
    """Where invert draws its preview: models/inv/airplane.safetensors -> models/inv/airplane.preview.png."""
    return _beside(embeddings, ".preview.png", keep_suffix=False)


def shard_path(out: str | Path, rank: int, world: int) -> Path:
    """Where shard rank/world of `out` is written: data/inv.h5 -> data/inv.shard-1-of-4.h5 (the Makefile's naming
    too)."""
    out = Path(out)
    return out.with_name(f"{out.stem}.shard-{rank}-of-{world}{out.suffix}")
