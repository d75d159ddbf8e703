"""The char-rnn workflow end to end through its real command lines: train, sample, eval,
resume, and every bad input with its one-line error."""
import hashlib
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

TINY = ["--num-layers", "2", "--rnn-size", "16", "--embed-size", "8", "--batch-size", "2",
        "--seq-length", "8", "--eval-every", "2", "--sample-length", "20", "--no-progress"]
TEXT = ("naïve café ☃ — the quick brown fox jumps over the lazy dog. " * 40 +
        "Ünïcödé lines: ✓ λ → ∞\n") * 3


def cli(tool, *args, cwd, check=True, timeout=180):
    result = subprocess.run([sys.executable, "-m", f"fastlstm.{tool}", *map(str, args)],
                            cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in result.stderr, result.stderr
    if check:
        assert result.returncode == 0, result.stderr
    return result


def fails(tool, *args, cwd, expect):
    """A bad input: non-zero exit, one clear line naming the problem, no traceback."""
    result = cli(tool, *args, cwd=cwd, check=False)
    assert result.returncode != 0
    assert expect in result.stderr, result.stderr
    return result


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_train_sample_eval_on_multibyte_text(tmp_path, corpus):
    cli("train", corpus, *TINY, "--max-iters", "4", "--out", "run", cwd=tmp_path)
    for name in ("last.pt", "best.pt", "log.jsonl", "loss.png"):
        assert (tmp_path / "run" / name).exists(), name
    payload = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    symbols = payload["vocab"]["symbols"]
    assert "☃" in symbols and "ï" in symbols and "→" in symbols  # code points, not bytes
    assert set(symbols) == set(TEXT)
    assert all(t.device.type == "cpu" for t in payload["model"].values())

    out = cli("sample", "run", "--length", "40", "--prime", "naïve ☃", "--seed", "3",
              cwd=tmp_path).stdout
    assert out.startswith("naïve ☃") and set(out.strip()) <= set(TEXT)
    again = cli("sample", "run", "--length", "40", "--prime", "naïve ☃", "--seed", "3",
                cwd=tmp_path).stdout
    assert out == again, "same seed, same sample"
    several = cli("sample", "run/last.pt", "--length", "10", "--num-samples", "3", "--top-k",
                  "5", "--seed", "1", cwd=tmp_path).stdout
    assert several.count("--- sample") == 3
    nucleus = [cli("sample", "run", "--length", "30", "--top-p", "0.9", "--top-k", "20",
                   "--seed", "4", "--precision", precision, cwd=tmp_path).stdout
               for precision in ("fp32", "fp32", "auto")]
    assert nucleus[0] == nucleus[1] and len(nucleus[2]) == len(nucleus[0])
    greedy = cli("sample", "run", "--argmax", "--length", "15", cwd=tmp_path).stdout
    assert greedy == cli("sample", "run", "--temperature", "0", "--length", "15",
                         cwd=tmp_path).stdout

    for split in ("val", "test"):
        line = cli("eval", "run", "--split", split, cwd=tmp_path).stdout
        assert "nats/char" in line and "bits/char" in line
    other = tmp_path / "other.txt"
    other.write_text("the lazy fox ☃\n", encoding="utf-8")
    assert "nats/char" in cli("eval", "run", "--text", other, cwd=tmp_path).stdout


def test_dtype_auto_and_bf16_training(tmp_path, corpus):
    """--dtype auto (the default) says what it chose: bf16 autocast where the device computes
    in bf16 natively, else fp32; a bf16 run trains (the loss falls) through FastLSTM's bf16
    path and writes fp32 weights."""
    from fastlstm.charrnn.train import resolve_dtype
    want = resolve_dtype("auto", torch.device("cpu"))
    out = cli("train", corpus, *TINY, "--max-iters", "2", "--out", "auto", cwd=tmp_path).stdout
    assert f"on cpu in {want} (--dtype auto)" in out
    cli("train", corpus, *TINY, "--dtype", "bf16", "--max-iters", "12", "--lr", "0.01",
        "--out", "bf16", cwd=tmp_path)
    done, payload = losses(tmp_path / "bf16" / "last.pt")
    assert len(done) == 12 and done[-1] < done[0]
    assert all(t.dtype == torch.float32 for t in payload["model"].values())
    assert payload["settings"]["dtype"] == "bf16"


def test_bytes_encoding_reads_any_file(tmp_path):
    raw = tmp_path / "blob.bin"
    raw.write_bytes(bytes(range(256)) * 20 + b"\xff\xfe" * 200)
    cli("train", raw, "--encoding", "bytes", *TINY, "--max-iters", "2", "--out", "run",
        cwd=tmp_path)
    payload = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert payload["vocab"]["encoding"] == "bytes" and len(payload["vocab"]["symbols"]) == 256
    cli("sample", "run", "--length", "10", cwd=tmp_path)


def losses(path):
    payload = torch.load(path, weights_only=True)
    return [h["loss"] for h in payload["history"] if "loss" in h], payload


@pytest.mark.parametrize("weight_drop", ["0", "0.3"])
def test_resume_equals_uninterrupted(tmp_path, corpus, weight_drop):
    # charrnn decay: cosine's schedule depends on --max-iters, which the resume changes
    sched = ("--lr-decay", "charrnn", "--weight-drop", weight_drop)
    cli("train", corpus, *TINY, *sched, "--max-iters", "7", "--out", "whole", cwd=tmp_path)
    cli("train", corpus, *TINY, *sched, "--max-iters", "3", "--out", "split", cwd=tmp_path)
    cli("train", "--resume", "split", "--max-iters", "7", cwd=tmp_path)
    whole, a = losses(tmp_path / "whole" / "last.pt")
    resumed, b = losses(tmp_path / "split" / "last.pt")
    assert len(whole) == 7 and whole == resumed  # bitwise: the same floats
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


def test_init_from_loads_weights_only(tmp_path, corpus):
    cli("train", corpus, *TINY, "--max-iters", "2", "--out", "base", cwd=tmp_path)
    out = cli("train", corpus, *TINY, "--max-iters", "2", "--out", "tuned", "--init-from",
              "base/last.pt", "--lr", "1e-4", cwd=tmp_path).stdout
    assert "starting from the weights of base/last.pt" in out
    fails("train", corpus, *TINY, "--rnn-size", "32", "--init-from", "base/last.pt",
          "--out", "x", cwd=tmp_path, expect="--rnn-size 16, but --rnn-size 32 was given")


def test_default_corpus_is_the_standard_library(tmp_path):
    out = cli("train", *TINY, "--max-iters", "1", "--out", "run", cwd=tmp_path).stdout
    assert "source files of the Python standard library" in out


def test_ctrl_c_saves_and_says_how_to_resume(tmp_path, corpus):
    proc = subprocess.Popen([sys.executable, "-m", "fastlstm.train", str(corpus), *TINY,
                             "--max-iters", "100000", "--eval-every", "100000", "--out", "run"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    log = tmp_path / "run" / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and log.stat().st_size > 200):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert "python -m fastlstm.train --resume run" in out
    done, _ = losses(tmp_path / "run" / "last.pt")
    cli("train", "--resume", "run", "--max-iters", str(len(done) + 2), cwd=tmp_path)
    assert len(losses(tmp_path / "run" / "last.pt")[0]) == len(done) + 2


def test_bad_inputs(tmp_path, corpus):
    cli("train", corpus, *TINY, "--max-iters", "2", "--out", "run", cwd=tmp_path)
    before = {n: digest(tmp_path / "run" / n) for n in ("last.pt", "best.pt")}

    fails("train", "missing.txt", cwd=tmp_path, expect="missing.txt: no such file")
    fails("train", tmp_path, cwd=tmp_path, expect="is a directory")
    (tmp_path / "empty.txt").write_text("")
    fails("train", "empty.txt", cwd=tmp_path, expect="empty.txt is empty")
    (tmp_path / "short.txt").write_text("abc" * 30)
    fails("train", "short.txt", "--out", "o1", cwd=tmp_path,
          expect="fewer than the 6464 one batch needs (--batch-size 64 x (--seq-length 100 + 1))"
                 "; lower --batch-size or --seq-length")
    fails("train", corpus, *TINY, "--val-frac", "0.0001", "--out", "o2", cwd=tmp_path,
          expect="the validation split has 0 characters; raise --val-frac")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9 au lait\n" * 100)
    fails("train", "latin1.txt", cwd=tmp_path,
          expect="not valid UTF-8 at byte 3 (line 1)")
    fails("train", "latin1.txt", cwd=tmp_path, expect="use --encoding bytes")
    fails("train", corpus, "--out", corpus / "sub", cwd=tmp_path, expect="cannot write to --out")
    fails("train", corpus, *TINY, "--out", "run", cwd=tmp_path,
          expect="already holds a run (last.pt); continue it with --resume run")
    fails("train", "--resume", "run", "--rnn-size", "32", cwd=tmp_path,
          expect="--rnn-size 16, but --rnn-size 32 was given")
    fails("train", corpus, "--dtype", "fp16", "--device", "cpu", "--out", "o3", cwd=tmp_path,
          expect="--dtype fp16 needs --device cuda")
    for flag, value in (("--rnn-size", "-3"), ("--num-layers", "0"), ("--dropout", "1"),
                        ("--batch-size", "0"), ("--lr", "-1"), ("--lr", "inf"),
                        ("--lr", "1e38"), ("--val-frac", "1.5"), ("--weight-drop", "1")):
        fails("train", corpus, flag, value, cwd=tmp_path, expect=flag)
    fails("sample", "run", "--temperature", "-0.5", cwd=tmp_path, expect="--temperature")
    fails("sample", "run", "--top-p", "0", cwd=tmp_path, expect="--top-p")
    fails("sample", "run", "--top-p", "1.5", cwd=tmp_path, expect="--top-p")

    (tmp_path / "junk.pt").write_bytes(os.urandom(300))
    torch.save({"some": "dict"}, tmp_path / "foreign.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(open(tmp_path / "run" / "last.pt", "rb").read()[:2000])
    for tool in ("sample", "eval"):
        fails(tool, "junk.pt", cwd=tmp_path, expect="junk.pt is not a readable fastlstm checkpoint")
        fails(tool, "foreign.pt", cwd=tmp_path, expect="foreign.pt is not a fastlstm char-rnn")
        fails(tool, "truncated.pt", cwd=tmp_path, expect="truncated.pt is not a readable")
        fails(tool, "nowhere", cwd=tmp_path, expect="nowhere: no such checkpoint")
    fails("train", "--resume", "truncated.pt", cwd=tmp_path, expect="is not a readable")
    fails("sample", "run", "--prime", "Zebra ✗", cwd=tmp_path,
          expect="--prime has characters the model's vocabulary lacks: 'Z', '✗'")
    (tmp_path / "alien.txt").write_text("Zzz\n")
    fails("eval", "run", "--text", "alien.txt", cwd=tmp_path, expect="'Z'")

    after = {n: digest(tmp_path / "run" / n) for n in ("last.pt", "best.pt")}
    assert after == before, "a failed command must leave existing checkpoints alone"


NAN_AFTER = """
import sys
import torch.nn.functional as F
import fastlstm.charrnn.train as train
from fastlstm.charrnn.cli import run

calls = {"n": 0}
real = F.cross_entropy


def nan_from_the_fifth_step(*args, **kwargs):
    loss = real(*args, **kwargs)
    if kwargs.get("reduction", "mean") == "mean":  # training steps, not evaluation
        calls["n"] += 1
        if calls["n"] >= 5:
            loss = loss * float("nan")
    return loss


train.F.cross_entropy = nan_from_the_fifth_step
sys.exit(run(train.main, sys.argv[1:]))
"""


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, corpus):
    """The real CLI with a loss made NaN from the 5th step on (injected: no honest setting
    makes fp32 diverge to NaN reliably)."""
    result = subprocess.run([sys.executable, "-c", NAN_AFTER, str(corpus), *TINY, "--max-iters",
                             "20", "--out", "run"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "the loss became nan at iteration 5" in result.stderr
    assert "Lower --lr" in result.stderr
    kept, _ = losses(tmp_path / "run" / "last.pt")
    assert len(kept) == 4 and all(x == x for x in kept)  # saved at iteration 4, all finite


def test_progress_bar_counts_toward_the_time_budget(tmp_path, corpus):
    """Under --time-budget the bar's total is where the time runs out (50 epochs here would be
    ~20k iterations): it ends full, and its ETA is the budget's, not the epochs'."""
    flags = [f for f in TINY if f != "--no-progress"]
    result = cli("train", corpus, *flags, "--eval-every", "100000", "--time-budget", "3",
                 "--out", "run", cwd=tmp_path)
    shown = [(int(n), int(total)) for n, total in re.findall(r"(\d+)/(\d+) \[", result.stderr)]
    assert len(shown) > 2, result.stderr[-2000:]
    first_total, (last_n, last_total) = shown[0][1], shown[-1]
    assert last_n == last_total < first_total, shown[-5:]


def test_help_explains_the_flags(tmp_path):
    out = cli("train", "--help", cwd=tmp_path).stdout
    for flag in ("--num-layers", "--rnn-size", "--dropout", "--batch-size", "--seq-length",
                 "--lr", "--max-iters", "--max-epochs", "--eval-every", "--out", "--resume",
                 "--init-from", "--seed", "--device", "--backend", "--dtype", "--encoding",
                 "--train-frac", "--val-frac", "--lr-decay", "--grad-clip", "--compile",
                 "--weight-decay", "--weight-drop", "--return-freed-memory"):
        assert flag in out, flag
    assert "--prime" in cli("sample", "--help", cwd=tmp_path).stdout
    assert "--split" in cli("eval", "--help", cwd=tmp_path).stdout


def test_cosine_decays_over_the_run():
    """Cosine reaches --min-lr at the last iteration, or at the end of --time-budget when that
    comes first; charrnn's decay starts after --lr-decay-after epochs."""
    from fastlstm.charrnn.train import TRAINING, lr_at
    cfg = dict(TRAINING, lr_decay="cosine", lr=2e-3, min_lr=1e-4)
    assert lr_at(cfg, 0, 0, 1000) == pytest.approx(2e-3)
    assert lr_at(cfg, 500, 3, 1000) == pytest.approx(1.05e-3)
    assert lr_at(cfg, 1000, 6, 1000) == pytest.approx(1e-4)
    assert lr_at(cfg, 100, 0, 1000, time_spent=0.5) == pytest.approx(1.05e-3)
    assert lr_at(cfg, 100, 0, 1000, time_spent=1.3) == pytest.approx(1e-4)
    charrnn = dict(TRAINING, lr_decay="charrnn", lr=2e-3)
    assert lr_at(charrnn, 5000, 10, 8000) == pytest.approx(2e-3)
    assert lr_at(charrnn, 5000, 12, 8000) == pytest.approx(2e-3 * 0.97 ** 2)


@pytest.mark.parametrize("optimizer", ["adam", "rmsprop"])
def test_weight_decay_shrinks_matrices_not_biases(optimizer):
    """With zero gradients an Adam / RMSprop step moves nothing but the decay: AdamW shrinks
    each weight matrix by lr x decay; RMSprop's L2 term moves it towards zero; biases stay."""
    from fastlstm.charrnn.model import CharRNN
    from fastlstm.charrnn.train import TRAINING, make_optimizer
    model = CharRNN(11, rnn_size=8, embed_size=4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = make_optimizer(model, dict(TRAINING, optimizer=optimizer, lr=0.01, weight_decay=0.5))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for name, p in model.named_parameters():
        if p.dim() < 2:
            assert torch.equal(p, before[name]), name
        elif optimizer == "adam":
            torch.testing.assert_close(p, before[name] * (1 - 0.01 * 0.5))
        else:
            assert ((p - before[name]) * before[name] < 0).all(), name  # towards zero


def test_optimizer_saved_in_one_group_resumes_in_two():
    """A checkpoint from before weight decay holds one parameter group in parameter order:
    it loads into the two groups with each parameter's own moments, and the decay is the
    one asked for now."""
    from fastlstm.charrnn.model import CharRNN
    from fastlstm.charrnn.train import TRAINING, load_optimizer, make_optimizer
    torch.manual_seed(0)
    model = CharRNN(11, rnn_size=8, embed_size=4)
    old = torch.optim.Adam(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    old.step()
    saved = old.state_dict()
    opt = make_optimizer(model, dict(TRAINING, weight_decay=0.0))
    load_optimizer(opt, model, saved, dict(TRAINING, weight_decay=0.25))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.25, 0.0]
    for p in model.parameters():
        assert torch.equal(opt.state[p]["exp_avg"], old.state[p]["exp_avg"])


def test_resume_of_a_run_saved_before_weight_decay(tmp_path, corpus):
    """Rewrite a checkpoint as one from before weight decay (no setting, one Adam group
    keyed by parameter index): it resumes, without decay, as it was trained."""
    from fastlstm.charrnn.model import CharRNN
    from fastlstm.charrnn.train import parameter_groups
    cli("train", corpus, *TINY, "--max-iters", "2", "--out", "run", cwd=tmp_path)
    path = tmp_path / "run" / "last.pt"
    payload = torch.load(path, weights_only=True)
    del payload["settings"]["weight_decay"]
    opt = payload["optimizer"]
    in_group_order = [i for idx in parameter_groups(CharRNN(**payload["config"])) for i in idx]
    opt["state"] = {in_group_order[k]: v for k, v in opt["state"].items()}
    opt["param_groups"] = [dict(opt["param_groups"][0], params=list(range(len(in_group_order))),
                                weight_decay=0.0, decoupled_weight_decay=False)]
    torch.save(payload, path)
    cli("train", "--resume", "run", "--max-iters", "3", cwd=tmp_path)
    resumed = torch.load(path, weights_only=True)
    assert resumed["progress"]["iter"] == 3
    assert resumed["settings"]["weight_decay"] == 0.0
    assert [g["weight_decay"] for g in resumed["optimizer"]["param_groups"]] == [0.0, 0.0]


@pytest.mark.parametrize("backend", ["auto", "cpu", "aten"])
def test_weight_drop_masks_the_recurrent_weights_in_training_only(backend):
    """--weight-drop: in training the LSTM runs with each W_hh through a dropout mask (drawn
    per forward from torch's generator), so the output is the one of a copy holding the masked
    weights, and W_hh's gradient is zero where the mask dropped; the parameters themselves
    stay untouched. In eval the weights are used as they are."""
    from fastlstm import ops
    from fastlstm.charrnn.model import CharRNN
    torch.manual_seed(0)
    model = CharRNN(13, rnn_size=24, num_layers=2, dropout=0.0, embed_size=8, backend=backend,
                    weight_drop=0.4)
    plain = CharRNN(13, rnn_size=24, num_layers=2, dropout=0.0, embed_size=8, backend=backend)
    plain.load_state_dict(model.state_dict())
    ids = torch.randint(13, (3, 9))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.manual_seed(5)
    logits, _ = model(ids)
    logits.logsumexp(-1).sum().backward()
    torch.manual_seed(5)  # the same draws: one seed per layer, in layer order
    masked = [ops.dropout(model.lstm.get_parameter(f"weight_hh_l{k}").detach(), 0.4)
              for k in range(2)]
    with torch.no_grad():
        for k in range(2):
            plain.lstm.get_parameter(f"weight_hh_l{k}").copy_(masked[k])
    expected, _ = plain(ids)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    for k in range(2):
        w = model.lstm.get_parameter(f"weight_hh_l{k}")
        assert isinstance(w, torch.nn.Parameter) and torch.equal(w, before[f"lstm.weight_hh_l{k}"])
        dropped = masked[k] == 0
        assert 0.25 < dropped.float().mean() < 0.55
        assert (w.grad[dropped] == 0).all() and (w.grad[~dropped] != 0).float().mean() > 0.9
    model.eval()
    plain.load_state_dict(model.state_dict())
    torch.testing.assert_close(model(ids)[0], plain.eval()(ids)[0], atol=0, rtol=0)


def test_run_saved_before_weight_drop_resumes_and_samples(tmp_path, corpus):
    """A checkpoint whose config has no weight_drop (saved before it) samples and resumes, as
    it was trained: without it."""
    cli("train", corpus, *TINY, "--max-iters", "2", "--out", "run", cwd=tmp_path)
    path = tmp_path / "run" / "last.pt"
    payload = torch.load(path, weights_only=True)
    del payload["config"]["weight_drop"]
    torch.save(payload, path)
    cli("sample", path, "--length", "10", cwd=tmp_path)
    cli("train", "--resume", "run", "--max-iters", "3", cwd=tmp_path)
    fails("train", "--resume", "run", "--max-iters", "4", "--weight-drop", "0.2", cwd=tmp_path,
          expect="has --weight-drop 0.0, but --weight-drop 0.2 was given")
    assert torch.load(path, weights_only=True)["progress"]["iter"] == 3


# Allocates, fills and frees a 64 MiB tensor 20 times, then prints the minor page faults of
# the last ten: glibc's default maps such a block afresh each time (every page faulted in
# again); with freed memory kept, the heap settles within a few allocations and is reused.
FAULTS_OF_REUSE = """
import resource, sys, torch
from fastlstm.charrnn.cli import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
for _ in range(10):
    torch.empty(16 << 20).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.empty(16 << 20).fill_(1.0)
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_keep_freed_memory_reuses_pages_instead_of_faulting_them_in():
    out = {}
    for mode in ("default", "keep"):
        result = subprocess.run([sys.executable, "-c", FAULTS_OF_REUSE, mode],
                                capture_output=True, text=True, check=True)
        out[mode] = result.stdout.split()
    assert out["keep"][0] == "True"
    pages = 10 * (64 << 20) // 4096
    assert int(out["default"][1]) > pages // 2  # each 64 MiB block faulted in afresh
    assert int(out["keep"][1]) < pages // 20
