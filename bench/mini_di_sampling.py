"""Whether DI's sampling settings, rather than its inversion, keep the miniature's DI samples from carrying their class.

Takes the embeddings that bench/mini_quality.py inverted (200 training images, 20 per class, at --updates) and samples
each image once at noise 0 and interpolation 0 (its own embedding) under several guidance scales and schedulers; for
each, the judge's share in the source's class and how often the sample's nearest source is its own. The official
setting (guidance 2.0, the model's own scheduler) is the first row. Cached in bench/.cache/mini-quality/.
Usage: python bench/mini_di_sampling.py [--updates 300] (after python bench/mini_quality.py)
"""

from __future__ import annotations

import argparse

from mini_quality import OUT, judge_share, once, retrieval

from common import machine

SETTINGS = {  # name: sample options
    "guidance 2.0, model's scheduler (official)": [],
    "guidance 1.0 (none)": ["--guidance", 1.0],
    "guidance 4.0": ["--guidance", 4.0],
    "guidance 7.5": ["--guidance", 7.5],
    "guidance 2.0, DDIM eta 0": ["--scheduler", "ddim", "--eta", 0.0],
    "guidance 2.0, 200 steps": ["--steps", 200],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=300, help="the inversion whose embeddings are sampled")
    parser.add_argument("--judge-steps", type=int, default=1000, help="the judge mini_quality.py trained")
    args = parser.parse_args()
    from synthkit.io.store import Store

    embeddings = OUT / f"mini-inv-{args.updates}.safetensors"
    judge = OUT / f"judge-{args.judge_steps}.safetensors"
    with Store(OUT / "real-20.h5") as s:
        sources, labels = s.images(), s.labels
    print(f"machine: {machine()}")
    rows = []
    for k, (name, options) in enumerate(SETTINGS.items()):
        out = OUT / f"mini-inv-{args.updates}-exact-v{k}.h5"
        once(
            out, "sample", "--embeddings", embeddings, "--per-image", 1, "--noise", 0, "--interp", 0, *options,
            "--out", out,
        )  # fmt: skip
        with Store(out) as s:
            rows.append(
                (
                    name,
                    judge_share(judge, s.images(), s.labels),
                    retrieval(s.images(), s.column("source_index"), sources),
                )
            )
    ceiling = judge_share(judge, sources, labels)
    print(
        f"\nDI samples at noise 0 and interpolation 0 of {len(sources)} sources ({args.updates} updates); the judge on"
    )
    print(f"the sources themselves: {100 * ceiling:.1f}%")
    print("| sampling | judged as their source's class | own source nearest in pixels |")
    print("|---|---:|---:|")
    for name, share, found in rows:
        print(f"| {name} | {100 * share:.1f}% ({share / ceiling:.2f}× sources) | {100 * found:.1f}% |")


if __name__ == "__main__":
    main()
