"""`synthkit caption`: a BLIP caption for every image of a store, as the original study made the prompts of its
Stable Diffusion row (`Dataset Preperation/captions-generation.ipynb`: `Salesforce/blip-image-captioning-base`,
`BlipProcessor` and `BlipForConditionalGeneration`, `generate` with its defaults, decoded without special tokens).

The captions stay with their images: the output is a copy of the store (the same images, labels, classes and
columns, so the same content fingerprint) with a string column `caption`, which `sample --init STORE
--prompt-from caption` reads as each init image's img2img prompt.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.config import CAPTION, DEFAULT_CAPTIONER, SEED
from ..core.device import job_device
from ..core.errors import UserError
from ..core.jobs import Asked, check_output
from ..core.meta import provenance
from ..core.outputs import locked_output
from ..core.paths import partial_path
from ..core.progress import progress
from ..io.store import DerivedWriter, Store, store_fingerprint, store_record
from .diffusion import quiet_libraries


def load_captioner(model: str, device: torch.device) -> tuple[Any, Any]:
    """BLIP's processor and captioning model, from a hub id (cache or download) or a local folder."""
    from transformers import BlipForConditionalGeneration, BlipProcessor

    quiet_libraries()
    local = Path(model).exists()
    for cache_only in (False,) if local else (True, False):  # the cache first, then a download unless offline
        if not cache_only and not local and os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
            break
        try:
            processor = BlipProcessor.from_pretrained(model, local_files_only=cache_only)
            captioner = BlipForConditionalGeneration.from_pretrained(model, local_files_only=cache_only)
            return processor, captioner.to(device).eval().requires_grad_(False)
        except Exception as err:  # hub, network and format errors come in many types
            if local:
                raise UserError(
                    f"{model} is not a BLIP captioning folder ({type(err).__name__}): it needs config.json, the "
                    "model's weights and the processor's files"
                ) from None
    raise UserError(
        f"cannot load model '{model}': it is not a local folder and is not in the Hugging Face cache, "
        "and it could not be downloaded (offline?). Pass --model PATH to a BLIP folder, "
        "or make a test model with: synthkit model tiny-blip --out models/tiny-blip"
    )


@torch.no_grad()
def caption_images(processor: Any, captioner: Any, images: np.ndarray, device: torch.device) -> list[str]:
    """One caption per uint8 image (B, H, W, 3): the processor's resizing and normalisation, `generate` with the
    model's own defaults (greedy, its generation config's length), special tokens dropped."""
    import warnings

    from PIL import Image

    inputs = processor(images=[Image.fromarray(image) for image in images], return_tensors="pt").to(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # transformers' advice on max_length: the study kept the default
        tokens = captioner.generate(**inputs)
    return [text.strip() for text in processor.batch_decode(tokens, skip_special_tokens=True)]


@locked_output("out")
def caption_store(
    data: Path,
    out: Path,
    model: str = DEFAULT_CAPTIONER,
    batch_size: int = CAPTION.batch_size,
    seed: int = SEED,
    device: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
) -> Path:
    """Write `out`: the store `data` with a `caption` column, one BLIP caption per image, in batches (resumable:
    each batch's captions are written with its images). `seed` seeds torch before each batch, so that a
    captioner set to sample draws the same words in a resumed run."""
    out = Path(out)
    params = {"model": model, "batch_size": batch_size, "seed": seed}

    def asked() -> Asked:
        return Asked(params, [(str(data), store_fingerprint(data))], store_record)

    if check_output(out, [partial_path(out)], overwrite, resume, inputs=[data, model], asked=asked):
        return out
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    with Store(data) as store:
        store.require_images()
        if "caption" in store.column_names:
            raise UserError(f"store {data} already has captions (a column 'caption')")
        dev = job_device(device)
        processor, captioner = load_captioner(model, dev)
        meta = provenance(
            store.meta.get("kind", "unknown"),
            params,
            [
                {
                    "path": str(data),
                    "fingerprint": store.fingerprint,
                    "count": len(store),
                    "sources": store.meta.get("sources", []),
                }
            ],
        )
        meta["captions"] = {"model": model, "device": str(dev), "of": store.meta.get("params", {})}
        with (
            DerivedWriter(
                store, out, meta, {"caption": "str"}, len(store), overwrite=overwrite, resume=resume
            ) as writer,
            progress() as bar,
        ):
            task = bar.add_task("caption", total=len(store), completed=writer.done)
            for start in range(writer.done, len(store), batch_size):
                rows = slice(start, min(start + batch_size, len(store)))
                images = store.images(rows)
                torch.manual_seed(seed * 1_000_003 + start)
                writer.append_rows(rows, images, caption=caption_images(processor, captioner, images, dev))
                bar.advance(task, len(images))
    return out


TINY_WORDS = (
    "a an the of on in with and photo picture image close up small large red blue green white black "
    "brown yellow airplane automobile car bird cat deer dog frog horse ship truck boat sky road grass "
    "water field tree sitting standing flying parked next to front background"
).split()


@locked_output("out", folder=True)
def build_tiny_captioner(out: str | Path, seed: int = 0, overwrite: bool = False) -> Path:
    """A BLIP captioner with random weights, built offline from transformers' own config classes with a small
    word-level BERT tokenizer, saved with save_pretrained: for tests and the demo (its captions are random words)."""
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    from .diffusion import NOISE_NOTE, check_model_output, save_folder

    check_model_output(out, overwrite)
    quiet_libraries()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *TINY_WORDS]
    tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(vocab)}, bos_token="[DEC]", model_max_length=64)
    ids = {token: vocab.index(token) for token in ("[PAD]", "[SEP]", "[DEC]")}
    config = BlipConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "encoder_hidden_size": 32,
            "intermediate_size": 37,
            "projection_dim": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 64,
            "bos_token_id": ids["[DEC]"],
            "eos_token_id": ids["[SEP]"],
            "sep_token_id": ids["[SEP]"],
            "pad_token_id": ids["[PAD]"],
            "initializer_range": 0.2,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "projection_dim": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
            "initializer_range": 1.0,
        },
        projection_dim=32,
    )  # the wide initial weights make its random captions differ from image to image
    torch.manual_seed(seed)
    captioner = BlipForConditionalGeneration(config).eval()
    processor = BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer)

    def save(folder: Path) -> None:
        captioner.save_pretrained(folder)
        processor.save_pretrained(folder)

    return save_folder(out, save, {"kind": "tiny-random-blip", "seed": seed, "note": NOISE_NOTE})
