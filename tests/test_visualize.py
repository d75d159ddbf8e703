"""fastlstm.charrnn's cells and visualize: the recorder, the feature scorer, and the page in a
real browser."""
import http.server
import re
import shutil
import subprocess
import sys
import threading

import pytest
import torch

from fastlstm.charrnn.cells import Recording, correlations, discover, record, text_features
from fastlstm.charrnn.model import CharRNN

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or \
    shutil.which("google-chrome")


def test_recorder_shapes_probabilities_and_states():
    torch.manual_seed(0)
    model = CharRNN(vocab_size=5, rnn_size=12, num_layers=2, dropout=0.0, embed_size=4)
    ids = torch.randint(0, 5, (17,))
    rec = record(model, ids, list("abcde"))
    assert rec.text == ["abcde"[i] for i in ids.tolist()]
    assert rec.cell.shape == rec.hidden.shape == (17, 2, 12)
    assert rec.top_ids.shape == rec.top_probs.shape == (17, 5)
    assert torch.allclose(rec.top_probs.sum(-1), torch.ones(17), atol=1e-5)  # all 5 symbols
    assert (rec.top_probs[:, :-1] >= rec.top_probs[:, 1:]).all()
    assert rec.cell.abs().max() <= 1
    with torch.no_grad():  # the recorded top-layer h is FastLSTM's own output, step or not
        out, (h_n, c_n) = model.lstm(model.embed(ids.unsqueeze(1)))  # time-major
    assert torch.allclose(rec.hidden[:, -1], out[:, 0], atol=1e-5)
    assert torch.allclose(rec.cell[-1], torch.tanh(c_n[:, 0]), atol=1e-5)


def test_text_features():
    f = text_features(list('ab "cd" (e[f]) # g\nh http://x y'))
    assert f["inside quotes"].tolist()[3:7] == [1, 1, 1, 0]
    assert f["bracket depth"][11] == 2 and f["bracket depth"][13] == 0
    assert f["position in line"][18] == 0 and f["position in line"][19] == 1
    assert f["inside a comment"][17] == 1 and f["inside a comment"][20] == 0
    assert f["inside a URL"][27] == 1 and f["inside a URL"][30] == 0
    assert f["start of a word"][0] == 1 and f["start of a word"][1] == 0


def test_discover_ranks_a_planted_cell_first():
    text = list(('say "hello there" and "bye" then (go) home\n' * 30))
    quotes = text_features(text)["inside quotes"]
    g = torch.Generator().manual_seed(0)
    cell = torch.tanh(torch.randn(len(text), 2, 16, generator=g))
    cell[:, 1, 7] = torch.tanh(2 * quotes - 1 + 0.1 * torch.randn(len(text), generator=g))
    rec = Recording(text, torch.zeros(len(text), 5, dtype=torch.long), torch.zeros(len(text), 5),
                    cell, cell)
    found = discover(rec)
    assert found[0]["feature"] == "inside quotes"
    assert (found[0]["layer"], found[0]["unit"]) == (1, 7) and found[0]["r"] > 0.9
    assert correlations(torch.ones(10, 3), torch.arange(10.0)).abs().max() == 0


def cli(*args, cwd):
    result = subprocess.run([sys.executable, "-m", *map(str, args)], cwd=cwd,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vis")
    text = 'She said "yes" (twice) — naïve ☃.\n' * 60
    (tmp / "corpus.txt").write_text(text, encoding="utf-8")
    cli("fastlstm.train", "corpus.txt", "--rnn-size", "16", "--embed-size", "8",
        "--batch-size", "2", "--seq-length", "16", "--max-iters", "4", "--eval-every", "4",
        "--sample-length", "0", "--no-progress", "--out", "run", cwd=tmp)
    out = cli("fastlstm.visualize", "run", "--split", "val", "--out", "page.html",
              "--png", "cells.png", cwd=tmp)
    assert "wrote page.html" in out and (tmp / "cells.png").stat().st_size > 1000
    return tmp / "page.html"


def test_cell_flag_and_bad_input(page):
    tmp = page.parent
    out = cli("fastlstm.visualize", "run", "--prime", "She said", "--cell", "1:3",
              "--out", "p2.html", cwd=tmp)
    assert "opens on layer 1 unit 3" in out
    bad = subprocess.run([sys.executable, "-m", "fastlstm.visualize", "run", "--cell", "7:0",
                          "--out", "p3.html"], cwd=tmp, capture_output=True, text=True)
    assert bad.returncode == 2 and "--cell 7:0: the model has layers 0..1" in bad.stderr


class RecordingProxy(http.server.BaseHTTPRequestHandler):
    """Chromium is pointed at this as its proxy: every request it makes lands here."""
    seen = []

    def do_GET(self):  # noqa: N802
        RecordingProxy.seen.append(self.path)
        self.send_error(404)

    do_POST = do_CONNECT = do_HEAD = do_GET

    def log_message(self, *args):
        pass


def browse(url, proxy_port, tmp, dump=True):
    # Quiet Chromium's own background traffic (updates, sync, time), so that whatever reaches
    # the proxy comes from the page.
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-default-apps", "--disable-client-side-phishing-detection",
            "--disable-domain-reliability", "--no-pings", "--metrics-recording-only",
            "--disable-features=OptimizationHints,MediaRouter,Translate,NetworkTimeServiceQuerying",
            f"--user-data-dir={tmp / 'profile'}", f"--proxy-server=127.0.0.1:{proxy_port}",
            "--proxy-bypass-list=<-loopback>", "--virtual-time-budget=3000"]
    args += ["--dump-dom", url] if dump else [url]
    return subprocess.run(args, capture_output=True, text=True, timeout=120).stdout


def host(request_path: str) -> str:
    """'http://a.b/x' or 'a.b:443' (a CONNECT) -> 'a.b'."""
    rest = request_path.split("://", 1)[-1]
    return rest.split("/", 1)[0].split(":", 1)[0]


def colours(dom):
    return re.findall(r'<span data-t="\d+" style="background-color: (rgb\([^)]*\))', dom)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs "
                    "Debian's chromium): THE REAL-BROWSER TEST DID NOT RUN")
def test_page_in_a_real_browser(page):
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RecordingProxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    port = proxy.server_address[1]
    try:
        # What Chromium fetches by itself (accounts, www.google.com: seen here even with its
        # background networking off) for an empty page; only requests beyond those count.
        blank = page.parent / "blank.html"
        blank.write_text("<p>blank</p>")
        browse(blank.as_uri(), port, page.parent)
        own = {host(p) for p in RecordingProxy.seen}
        # The check can fail: a page that fetches something is seen by the proxy.
        control = page.parent / "control.html"
        control.write_text('<img src="http://fastlstm-test.invalid/x.png">')
        RecordingProxy.seen.clear()
        browse(control.as_uri(), port, page.parent)
        assert "fastlstm-test.invalid" in {host(p) for p in RecordingProxy.seen} - own
        RecordingProxy.seen.clear()

        first = browse(page.as_uri() + "#cell=0:1", port, page.parent)
        second = browse(page.as_uri() + "#cell=1:5", port, page.parent)
        extra = {host(p) for p in RecordingProxy.seen} - own
        assert not extra, f"the page made network requests to {extra}"
    finally:
        proxy.shutdown()
    html_text = page.read_text(encoding="utf-8")
    assert "default-src 'none'" in html_text  # and its CSP forbids any fetch
    a, b = colours(first), colours(second)
    text_len = len(page.read_text(encoding="utf-8").split('"text": [')[1].split("]")[0]
                   .split('", "'))
    assert len(a) == len(b) > 100 and abs(len(a) - text_len) <= 1
    assert len(set(a)) > 3, "the text is coloured by the cell's activation"
    assert a != b, "selecting another cell changes the colours"
    assert 'data-cell="0:1"' in first and 'data-cell="1:5"' in second
    shown = re.sub(r"<script.*?</script>|<[^>]+>", "", first, flags=re.S)  # what a reader sees
    assert "said&nbsp;\"yes\"&nbsp;(twice)" in shown  # the text itself, one span a character

