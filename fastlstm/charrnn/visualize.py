"""`python -m fastlstm.visualize CKPT --text FILE --out page.html`: see inside a trained
char-rnn. Writes one self-contained HTML page (no server, no network; open it from disk):
the text coloured by one cell's activation (tanh of its cell state, blue -1 .. red +1), the
model's five likeliest next characters for every position (hover a character), controls to
pick the layer and unit (arrow keys step through units), and the cells that best track
simple features of the text — quotes, brackets, position in the line, comments, words, URLs.
The page opens on the strongest of them; --cell LAYER:UNIT picks one. The URL fragment
#cell=LAYER:UNIT selects a cell too.
"""
from __future__ import annotations

import argparse
import base64
import html
import json
import os
import sys

import torch

from . import corpus, data
from .cells import discover, record
from .cli import CliError, pick_device, positive_int, run
from .sample import load_model
from .train import load_corpus


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastlstm.visualize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint file or --out folder")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", metavar="FILE", help="read this file")
    src.add_argument("--prime", metavar="TEXT", help="read this text")
    src.add_argument("--split", choices=["val", "test"], help="read a split of the training "
                     "corpus (default: val)")
    p.add_argument("--max-chars", type=positive_int, default=2000,
                   help="characters to read (default 2000)")
    p.add_argument("--out", default="cells.html", help="the HTML page (default cells.html)")
    p.add_argument("--cell", metavar="LAYER:UNIT", help="the cell to open on (default: the "
                   "one that tracks a feature best)")
    p.add_argument("--png", metavar="FILE", help="also write a static image of the first "
                   "lines coloured by the chosen cell")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    return p


def source_ids(args, vocab, payload) -> torch.Tensor:
    if args.text:
        text = corpus.open_file(args.text, vocab.encoding, cache=False)
        return torch.from_numpy(corpus.ids_in(text, vocab, what=args.text).astype("int64"))
    if args.prime:
        prime = args.prime.encode("utf-8") if vocab.encoding == "bytes" else args.prime
        return vocab.encode(prime, what="--prime")
    cfg = payload["settings"]
    trained_on = load_corpus(cfg)
    ids = corpus.ids_in(trained_on, vocab, what=f"corpus {trained_on.source}")
    _, val, test = data.split(ids, cfg["train_frac"], cfg["val_frac"], cfg["val_max_chars"])
    part = val if (args.split or "val") == "val" else test
    return torch.from_numpy(part[:args.max_chars].astype("int64"))


def parse_cell(spec: str, layers: int, units: int):
    try:
        layer, unit = (int(v) for v in spec.split(":"))
    except ValueError:
        raise CliError(f"--cell takes LAYER:UNIT, e.g. 1:42; got {spec!r}") from None
    if not (0 <= layer < layers and 0 <= unit < units):
        raise CliError(f"--cell {spec}: the model has layers 0..{layers - 1} and units "
                       f"0..{units - 1}")
    return layer, unit


def symbol_text(symbol) -> str:
    return chr(symbol) if isinstance(symbol, int) else symbol


def page(rec, vocab, interesting, start, title: str) -> str:
    steps, layers, units = rec.cell.shape
    # Activations as int8 (-127..127), base64 per layer: a few MB for thousands of characters.
    cells = [base64.b64encode((rec.cell[:, layer] * 127).round().to(torch.int8).numpy()
                              .tobytes()).decode() for layer in range(layers)]
    payload = {
        "text": [symbol_text(s) for s in rec.text],
        "top": [[[symbol_text(vocab.symbols[i]), round(float(p), 4)]
                 for i, p in zip(ids.tolist(), probs.tolist())]
                for ids, probs in zip(rec.top_ids, rec.top_probs)],
        "layers": layers, "units": units, "cells": cells, "interesting": interesting,
        "start": {"layer": start[0], "unit": start[1]},
    }
    blob = json.dumps(payload, ensure_ascii=True).replace("</", "<\\/")
    return TEMPLATE.replace("__TITLE__", html.escape(title)).replace("__DATA__", blob)


def write_png(rec, layer: int, unit: int, path: str, max_lines: int = 8) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm
    values = rec.cell[:, layer, unit].tolist()
    lines, line = [], []
    for ch, v in zip(rec.text, values):
        ch = symbol_text(ch)
        if ch == "\n":
            lines.append(line)
            line = []
            if len(lines) >= max_lines:
                break
        else:
            line.append((ch, v))
    if line and len(lines) < max_lines:
        lines.append(line)
    width = max((len(l) for l in lines), default=1)
    fig, ax = plt.subplots(figsize=(min(0.11 * width + 0.5, 30), 0.3 * len(lines) + 0.6))
    cmap, norm = plt.get_cmap("RdBu_r"), TwoSlopeNorm(vcenter=0, vmin=-1, vmax=1)
    for row, chars in enumerate(lines):
        for col, (ch, v) in enumerate(chars):
            ax.add_patch(plt.Rectangle((col, -row - 1), 1, 1, color=cmap(norm(v))))
            ax.text(col + 0.5, -row - 0.5, ch, ha="center", va="center", family="monospace",
                    fontsize=9)
    ax.set_xlim(0, width)
    ax.set_ylim(-len(lines), 0)
    ax.axis("off")
    ax.set_title(f"layer {layer}, unit {unit}: tanh(c)", fontsize=9)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    device = pick_device(args.device)
    model, vocab, payload, path = load_model(args.checkpoint, device)
    ids = source_ids(args, vocab, payload)[:args.max_chars]
    if len(ids) < 2:
        raise CliError("the text to read has fewer than 2 characters")
    rec = record(model, ids, vocab.symbols)
    layers, units = rec.cell.shape[1], rec.cell.shape[2]
    interesting = discover(rec)
    if args.cell:
        start = parse_cell(args.cell, layers, units)
    elif interesting:
        start = (interesting[0]["layer"], interesting[0]["unit"])
    else:
        start = (layers - 1, 0)
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        raise CliError(f"--out {args.out}: folder {out_dir} does not exist")
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(page(rec, vocab, interesting, start, f"fastlstm cells: {os.path.basename(path)}"))
    print(f"wrote {args.out}: {len(ids)} characters, {layers} layers x {units} units; "
          f"opens on layer {start[0]} unit {start[1]}")
    for item in interesting[:6]:
        print(f"  layer {item['layer']} unit {item['unit']}: r = {item['r']:+.3f} with "
              f"'{item['feature']}'")
    if args.png:
        write_png(rec, *start, args.png)
        print(f"wrote {args.png}")
    return 0


TEMPLATE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
      content="default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'">
<title>__TITLE__</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
#text { font: 15px/1.9 ui-monospace, monospace; white-space: pre-wrap; border: 1px solid #ccc;
        padding: .8em; max-width: 70em; }
#text span { padding: 1px 0; cursor: default; }
#text span.hover { outline: 1px solid #000; }
#controls { margin: .8em 0; display: flex; gap: .8em; align-items: center; flex-wrap: wrap; }
#preds { font: 13px ui-monospace, monospace; min-height: 7.5em; margin: .5em 0; }
#preds div { display: flex; gap: .5em; align-items: center; }
#preds b { display: inline-block; width: 2.5em; }
#preds i { display: inline-block; height: .8em; background: #4a7; }
#list { columns: 2; max-width: 70em; }
#list li { cursor: pointer; } #list li.on { font-weight: bold; }
.scale { display: inline-block; width: 12em; height: 1em; vertical-align: middle;
         background: linear-gradient(to right, rgb(33,102,172), #fff, rgb(178,24,43)); }
</style></head><body>
<h1>__TITLE__</h1>
<div id="controls">
  <label>layer <select id="layer"></select></label>
  <label>unit <input id="unit" type="number" min="0" style="width:5em"></label>
  <button id="prev">&larr; unit</button><button id="next">unit &rarr;</button>
  <span>tanh(c): &minus;1 <span class="scale"></span> +1</span>
  <span id="which"></span>
</div>
<div id="preds">Hover a character: the model's five likeliest next characters after it.</div>
<div id="text"></div>
<h2>Cells that track a feature of the text</h2>
<ol id="list"></ol>
<p>Keys: &larr;/&rarr; previous/next unit, &uarr;/&darr; layer.</p>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const T = D.text.length;
const cells = D.cells.map(b64 => {
  const raw = atob(b64), out = new Int8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i) << 24 >> 24;
  return out;
});
const textDiv = document.getElementById("text"), spans = [];
const show = ch => ch === "\n" ? "\u21b5\n" : ch === " " ? "\u00a0" : ch === "\t" ? "\u21e5" : ch;
D.text.forEach((ch, t) => {
  const s = document.createElement("span");
  s.textContent = show(ch);
  s.dataset.t = t;
  textDiv.appendChild(s);
  spans.push(s);
});
const layerSel = document.getElementById("layer"), unitIn = document.getElementById("unit");
for (let l = 0; l < D.layers; l++) layerSel.add(new Option(String(l), String(l)));
unitIn.max = D.units - 1;
function colour(v) {
  const a = Math.min(1, Math.abs(v));
  const [r, g, b] = v >= 0 ? [178, 24, 43] : [33, 102, 172];
  const mix = c => Math.round(255 + (c - 255) * a);
  return `rgb(${mix(r)}, ${mix(g)}, ${mix(b)})`;
}
let layer = D.start.layer, unit = D.start.unit;
function select(l, u) {
  layer = Math.max(0, Math.min(D.layers - 1, l));
  unit = ((u % D.units) + D.units) % D.units;
  layerSel.value = String(layer);
  unitIn.value = String(unit);
  const acts = cells[layer];
  for (let t = 0; t < T; t++) spans[t].style.backgroundColor = colour(acts[t * D.units + unit] / 127);
  document.getElementById("which").textContent = `showing layer ${layer}, unit ${unit}`;
  document.body.dataset.cell = `${layer}:${unit}`;
  document.querySelectorAll("#list li").forEach(li =>
    li.classList.toggle("on", li.dataset.cell === `${layer}:${unit}`));
}
D.interesting.forEach(c => {
  const li = document.createElement("li");
  li.textContent = `layer ${c.layer}, unit ${c.unit}: r = ${c.r > 0 ? "+" : ""}${c.r} with "${c.feature}"`;
  li.dataset.cell = `${c.layer}:${c.unit}`;
  li.onclick = () => select(c.layer, c.unit);
  document.getElementById("list").appendChild(li);
});
const preds = document.getElementById("preds");
textDiv.addEventListener("mouseover", e => {
  const t = e.target.dataset && e.target.dataset.t;
  if (t === undefined) return;
  spans.forEach(s => s.classList.remove("hover"));
  e.target.classList.add("hover");
  preds.replaceChildren(...D.top[+t].map(([ch, p]) => {
    const row = document.createElement("div"), b = document.createElement("b"),
          bar = document.createElement("i"), label = document.createElement("span");
    b.textContent = JSON.stringify(ch);
    bar.style.width = `${Math.round(p * 200)}px`;
    label.textContent = `${(p * 100).toFixed(1)}%`;
    row.append(b, bar, label);
    return row;
  }));
});
layerSel.onchange = () => select(+layerSel.value, unit);
unitIn.onchange = () => select(layer, +unitIn.value);
document.getElementById("prev").onclick = () => select(layer, unit - 1);
document.getElementById("next").onclick = () => select(layer, unit + 1);
document.addEventListener("keydown", e => {
  if (e.target === unitIn) return;
  if (e.key === "ArrowRight") select(layer, unit + 1);
  else if (e.key === "ArrowLeft") select(layer, unit - 1);
  else if (e.key === "ArrowUp") select(layer - 1, unit);
  else if (e.key === "ArrowDown") select(layer + 1, unit);
  else return;
  e.preventDefault();
});
function fromHash() {
  const m = /cell=(\d+):(\d+)/.exec(location.hash);
  if (m) select(+m[1], +m[2]); else select(layer, unit);
}
window.addEventListener("hashchange", fromHash);
fromHash();
</script>
</body></html>
"""

if __name__ == "__main__":
    sys.exit(run(main))
