"""Provenance: the metadata every store and safetensors file carries about how it was made, and the kinds of file
synthkit writes, each with the record it carries (declared here, checked here when a file is read)."""

import datetime as _dt
import json
import shlex
import sys
from enum import StrEnum
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from .errors import UserError
from .version import __version__


class Kind(StrEnum):
    """What a file holds, in its record's `kind`."""

    REAL = "real"  # a store of real images (data, subset, caption; a filtered real store)
    INV = "inv"  # a store of Diffusion Inversion samples (sample --embeddings)
    SD = "sd"  # a store of prompt samples, text to image or img2img (sample --prompt / --prompt-from)
    CLASSIFIER = "classifier"  # a trained classifier of classifiers.CLASSIFIERS (train)
    EMBEDDINGS = "embeddings"  # learned embeddings (invert, merge)
    TRAIN_STATE = "train-state"  # a classifier's resumable state
    INVERT_STATE = "invert-state"  # an inversion chunk's resumable state
    INVERT_CHUNK = "invert-chunk"  # a finished chunk of an inversion job


class Provenance(TypedDict):
    """What every file's record carries: how it was made."""

    kind: str
    command: str
    params: dict[str, Any]
    synthkit_version: str
    created: str
    sources: list[Any]


class StoreRecord(Provenance):
    """A store's record (kind real, inv or sd); samples add what made them."""

    model: NotRequired[str]  # inv, sd: the Stable Diffusion checkpoint
    device: NotRequired[str]
    shard: NotRequired[str]
    uncond: NotRequired[str]  # inv: the unconditional input of guidance, in words
    real_images: NotRequired[int]  # inv: the real images whose embeddings it sampled
    prompts: NotRequired[str]  # sd: templates, or each init image's caption
    captions: NotRequired[dict[str, Any]]  # real, from synthkit caption: the captioner
    filter: NotRequired[dict[str, Any]]  # from synthkit filter: criterion, thresholds


class ClassifierRecord(Provenance):
    """A classifier's record: what it is, and how it was trained (its recipe's every value is in params)."""

    arch: str  # a name of classifiers.CLASSIFIERS (before --arch: resnet18-cifar or resnet18-imagenet)
    classes: list[str]
    steps: int
    final_loss: float
    seconds: float
    device: str
    image_size: NotRequired[int]  # classifiers written before it was recorded are 32 px
    stem: NotRequired[str]  # cifar or imagenet (before --arch, in arch's name)
    recipe: NotRequired[str]  # since training counts steps under recipes
    images_seen: NotRequired[int]
    batch: NotRequired[dict[str, int]]  # images of each kind per step
    final_train_acc: NotRequired[float]
    streamed: NotRequired[bool]
    versions: NotRequired[dict[str, str]]
    evals: NotRequired[list[dict[str, float]]]  # with train --test: test accuracy at each evaluation
    test: NotRequired[dict[str, str]]
    final_test_acc: NotRequired[float]
    best_test_acc: NotRequired[float]
    best_test_step: NotRequired[int]


class EmbeddingsRecord(Provenance):
    """Learned embeddings' record: the model and setup they belong to, and each group's loss."""

    model: str
    classes: list[str]
    tokens: int
    hidden: int
    resolution: int
    image_size: int
    shard: str
    group_loss: dict[str, list[float]]
    group_ids: NotRequired[str]  # the naming of groups; files of older synthkit versions lack it (and are refused)


RECORDS: dict[str, type] = {
    Kind.REAL: StoreRecord,
    Kind.INV: StoreRecord,
    Kind.SD: StoreRecord,
    Kind.CLASSIFIER: ClassifierRecord,
    Kind.EMBEDDINGS: EmbeddingsRecord,
}


def check_record(meta: dict[str, Any], kind: Kind, path: str | Path, what: str) -> dict[str, Any]:
    """The record of a file read as `kind`: refused in one line when it is another kind, or lacks a field its
    kind's record requires (`what` names the file for the user, e.g. 'a synthkit classifier')."""
    if meta.get("kind") != kind:
        raise UserError(f"{path} is not {what} (its kind is '{meta.get('kind')}')")
    record = RECORDS.get(kind)
    missing = sorted(record.__required_keys__ - set(meta)) if record else []
    if missing:
        raise UserError(f"{path} is not {what}: its record lacks {', '.join(missing)}")
    return meta


def command_line() -> str:
    """The command line of this process, quoted so it can be pasted back into a shell."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(("synthkit", "__main__.py", "cli.py")):
        argv[0] = "synthkit"
    return shlex.join(argv)


def provenance(kind: str, params: dict[str, Any], sources: list[Any] | None = None) -> dict[str, Any]:
    """Build the standard metadata record: kind, command, parameters, version, time, sources."""
    return {
        "kind": kind,
        "command": command_line(),
        "params": jsonable(params),
        "synthkit_version": __version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "sources": jsonable(sources or []),
    }


def model_note(model: str) -> dict[str, Any]:
    """What synthkit wrote about a model folder it built (synthkit.json, e.g. the tiny random pipeline), or {}."""
    from pathlib import Path

    from .errors import UserError
    from .paths import resolve_model

    try:
        path = Path(resolve_model(str(model))) / "synthkit.json"
    except UserError:  # a shipped model missing from a broken install: nothing to say about it
        return {}
    return json.loads(path.read_text()) if path.is_file() else {}


def jsonable(value: Any) -> Any:
    """Turn paths, tuples and numpy scalars into plain JSON values (round-trips through json)."""
    return json.loads(json.dumps(value, default=_default))


def _default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    return str(obj)
