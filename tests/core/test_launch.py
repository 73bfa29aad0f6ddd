import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from synthkit.core.errors import UserError
from synthkit.core.launch import Launch, detect, shard_items
from synthkit.core.paths import shard_path
from synthkit.io.store import Store

from conftest import run


def test_the_launchers_are_read_from_the_environment():
    assert detect({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == Launch("torchrun", 1, 4, 1)
    assert detect({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_COUNT": "3"}) == Launch(
        "slurm-array", 2, 3
    )
    assert detect({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "2"}).shard == "0/2"
    assert detect({"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_STEP_ID": "0"}) == Launch("slurm-step", 3, 8)
    assert detect({"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_JOB_ID": "1"}) == Launch(
        "none"
    )  # the batch script itself
    assert detect({"PATH": "/bin"}) == Launch("none") and Launch("none").shard == ""
    with pytest.raises(UserError, match="RANK"):
        detect({"RANK": "x", "WORLD_SIZE": "2"})
    assert shard_path(Path("data/inv.h5"), 1, 4) == Path("data/inv.shard-1-of-4.h5")


def test_shard_items_gives_each_shard_its_contiguous_slice(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_ARRAY_TASK_ID", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    items = list("abcde")
    whole = shard_items(items, "", "cpu")
    assert (whole.items, whole.first, whole.stop, whole.total, whole.shard, whole.device) == (items, 0, 5, 5, "", "cpu")
    assert [shard_items(items, f"{i}/3", "cpu").items for i in range(3)] == [["a"], ["b", "c"], ["d", "e"]]
    assert shard_items(items[:1], "0/2", "cpu").items == [] and shard_items(items, "auto", "cpu").items == items
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    mine = shard_items(items, "auto", "cpu")
    assert (mine.items, mine.first, mine.stop, mine.shard, mine.device) == (["c", "d", "e"], 2, 5, "1/2", "cpu")
    with pytest.raises(UserError, match="i/n"):
        shard_items(items, "2", "cpu")


def test_shard_auto_without_a_launcher_is_the_whole_job(tiny_sd, tmp_path, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_ARRAY_TASK_ID", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    result = run(
        "sample",
        "--prompt",
        "a {class}",
        "--classes",
        "a,b",
        "--per-class",
        2,
        "--model",
        tiny_sd,
        "--steps",
        1,
        "--resolution",
        64,
        "--shard",
        "auto",
        "--device",
        "cpu",
        "--out",
        tmp_path / "s.h5",
    )
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].startswith("shard auto: no launcher") and "device cpu" in result.output
    with Store(tmp_path / "s.h5") as s:
        assert len(s) == 4 and s.meta["device"] == "cpu" and s.shard == ""


def torchrun(*args, cwd) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node 2 -m synthkit ARGS` on the CPU, outside any launcher's environment."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))
    }
    env |= {"OMP_NUM_THREADS": "1", "SYNTHKIT_DEVICE": "cpu"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "synthkit",
            *map(str, args),
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def same_store(a: Path, b: Path) -> None:
    with Store(a) as x, Store(b) as y:
        assert len(x) == len(y) and np.array_equal(x.images(), y.images()) and np.array_equal(x.labels, y.labels)
        assert x.column_names == y.column_names
        for name in x.column_names:
            assert np.array_equal(x.column(name), y.column(name)), name


def test_torchrun_ranks_sample_their_shards_and_rank_0_merges(tiny_sd, tmp_path):
    args = [
        "sample",
        "--prompt",
        "a {class}",
        "--classes",
        "a,b,c",
        "--per-class",
        3,
        "--model",
        tiny_sd,
        "--steps",
        2,
        "--resolution",
        64,
        "--batch-size",
        2,
        "--seed",
        3,
    ]
    done = torchrun(*args, "--shard", "auto", "--out", tmp_path / "ranks.h5", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "shard 0/2 from torchrun, device cpu" in done.stdout and "shard 1/2 from torchrun" in done.stdout
    assert "rank 0 merged 2 shards" in done.stdout
    assert sorted(p.name for p in tmp_path.glob("ranks*")) == ["ranks.h5"]  # shards removed once merged
    result = run(*args, "--device", "cpu", "--out", tmp_path / "whole.h5")
    assert result.exit_code == 0, result.output
    same_store(tmp_path / "ranks.h5", tmp_path / "whole.h5")


def test_torchrun_inversion_equals_an_unsharded_run(tiny_sd, small_real, tmp_path):
    from synthkit.io.checkpoint import load_checkpoint

    args = [
        "invert",
        "--class",
        "all",
        "--data",
        small_real,
        "--model",
        tiny_sd,
        "--resolution",
        64,
        "--updates",
        2,
        "--group-size",
        4,
        "--batch-size",
        4,
        "--chunk-groups",
        3,
        "--preview-every",
        0,
    ]
    done = torchrun(*args, "--shard", "auto", "--out", tmp_path / "ranks.safetensors", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = run(*args, "--device", "cpu", "--out", tmp_path / "whole.safetensors")
    assert result.exit_code == 0, result.output
    (a, meta), (b, _) = load_checkpoint(tmp_path / "ranks.safetensors"), load_checkpoint(tmp_path / "whole.safetensors")
    assert set(a) == set(b) and meta["shard"] == ""
    for key in a:
        assert np.allclose(a[key].numpy(), b[key].numpy(), atol=1e-5), key


def test_a_failed_rank_fails_the_job_and_nothing_is_merged(tiny_sd, tmp_path):
    out = tmp_path / "ranks.h5"
    Path(str(shard_path(out, 1, 2)) + ".partial").write_bytes(b"an interrupted run")  # rank 1 refuses to start over
    done = torchrun(
        "sample",
        "--prompt",
        "a {class}",
        "--classes",
        "a,b",
        "--per-class",
        2,
        "--model",
        tiny_sd,
        "--steps",
        1,
        "--resolution",
        64,
        "--shard",
        "auto",
        "--out",
        out,
        cwd=tmp_path,
    )
    assert done.returncode != 0
    assert "an interrupted run of" in done.stderr and "ranks.shard-1-of-2.h5" in done.stderr
    assert not out.exists()
