"""Data-parallel training: real 2-process runs through torchrun on the CPU (gloo)."""
import json
import os
import subprocess
import sys

import pytest
import torch

# No dropout of either kind: each rank draws its own masks, so only without them do two
# processes compute what one does.
ARGS = ["--rnn-size", "16", "--embed-size", "8", "--batch-size", "4", "--seq-length", "16",
        "--dropout", "0", "--weight-drop", "0", "--eval-every", "3", "--sample-length", "0", "--no-progress",
        "--lr", "0.02", "--backend", "cpu", "--dtype", "fp32",  # our C++ op, fp32, under DDP
        "--lr-decay", "charrnn"]  # cosine would follow --max-iters, which the resumes change
TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(900))


def train(*args, cwd, procs=1):
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 f"--nproc_per_node={procs}", "-m", "fastlstm.train"] if procs > 1
                else [sys.executable, "-m", "fastlstm.train"])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([*launcher, *map(str, args)], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result


def history(path):
    payload = torch.load(path, weights_only=True)
    return [h["loss"] for h in payload["history"] if "loss" in h], payload


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    (tmp / "corpus.txt").write_text(TEXT)
    train("corpus.txt", *ARGS, "--max-iters", "6", "--out", "one", cwd=tmp)
    out = train("corpus.txt", *ARGS, "--max-iters", "6", "--out", "two", cwd=tmp, procs=2)
    return tmp, out


def test_two_processes_equal_one_with_the_same_global_batch(runs):
    tmp, out = runs
    single, a = history(tmp / "one" / "last.pt")
    double, b = history(tmp / "two" / "last.pt")
    assert len(single) == len(double) == 6
    for x, y in zip(single, double):
        assert abs(x - y) <= 1e-5 * abs(x)
    assert single[-1] < single[0], "the loss goes down"
    for name in a["model"]:
        err = (a["model"][name] - b["model"][name]).norm() / a["model"][name].norm()
        assert err < 1e-5, name
    assert b["carry"][0].shape[1] == 4, "the checkpoint holds the global batch's state"
    assert "x 2 processes" in out.stdout


def test_only_rank_zero_writes(runs):
    tmp, out = runs
    lines = [json.loads(line) for line in open(tmp / "two" / "log.jsonl")]
    assert [r["iter"] for r in lines if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert sorted(os.listdir(tmp / "two")) == ["best.pt", "last.pt", "log.jsonl", "loss.png"]
    assert out.stdout.count("done at iteration 6") == 1


def test_resume_exactly_under_torchrun_and_across_world_sizes(runs):
    tmp, _ = runs
    train("corpus.txt", *ARGS, "--max-iters", "3", "--out", "part", cwd=tmp, procs=2)
    train("--resume", "part", "--max-iters", "6", cwd=tmp, procs=2)
    assert history(tmp / "part" / "last.pt")[0] == history(tmp / "two" / "last.pt")[0]

    train("--resume", "two", "--max-iters", "8", cwd=tmp)              # 2 processes -> 1
    train("--resume", "one", "--max-iters", "8", cwd=tmp, procs=2)     # 1 process -> 2
    from_two, _ = history(tmp / "two" / "last.pt")
    from_one, _ = history(tmp / "one" / "last.pt")
    assert len(from_two) == len(from_one) == 8
    for x, y in zip(from_two, from_one):  # no dropout: the same run either way
        assert abs(x - y) <= 1e-5 * abs(x)


def test_batch_must_split_evenly(tmp_path):
    (tmp_path / "corpus.txt").write_text(TEXT)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc_per_node=2", "-m", "fastlstm.train", "corpus.txt",
                             "--batch-size", "3", "--out", "x"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode != 0
    assert "--batch-size 3 does not split evenly over 2 processes" in result.stderr
