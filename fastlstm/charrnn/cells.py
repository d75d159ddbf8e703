"""Looking inside a trained char-rnn: record what it predicts and what its cells do on a
text, and find the cells that track simple features of the text (the 2015 post's quote
cell, line-position cell, bracket cell...)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .model import CharRNN


@dataclass
class Recording:
    text: list            # the symbols read, one per step
    top_ids: torch.Tensor     # [steps, k] the k likeliest next symbols after each step
    top_probs: torch.Tensor   # [steps, k] their probabilities
    cell: torch.Tensor        # [steps, layers, units] tanh(c): the cell state, squashed
    hidden: torch.Tensor      # [steps, layers, units] h, the layer outputs


@torch.no_grad()
def record(model: CharRNN, ids: torch.Tensor, symbols: list, k: int = 5) -> Recording:
    """Read ids (1-D) through the model, one step at a time via FastLSTM.inspect()."""
    model.eval()
    device = next(model.parameters()).device
    x = model.embed(ids.to(device).unsqueeze(1))  # [steps, 1, embed]: the LSTM is time-major
    out, _, states = model.lstm.inspect(x)
    probs = torch.softmax(model.head(out[:, 0]).float(), dim=-1)
    top_probs, top_ids = probs.topk(min(k, probs.size(-1)), dim=-1)
    return Recording(text=[symbols[i] for i in ids.tolist()], top_ids=top_ids.cpu(),
                     top_probs=top_probs.cpu(), cell=torch.tanh(states["c"][:, :, 0]).float().cpu(),
                     hidden=states["h"][:, :, 0].float().cpu())


def text_features(text: list) -> dict:
    """Per-character features of the text read so far (at each position, the state after
    reading that character): {name: float tensor [steps]}."""
    n = len(text)
    feats = {name: torch.zeros(n) for name in (
        "inside quotes", "inside parentheses/brackets", "bracket depth", "position in line",
        "inside a comment", "start of a word", "inside a URL")}
    quote, depth, column, comment, url = None, 0, 0, False, False
    previous = " "
    for t, ch in enumerate(str(c) for c in text):
        if ch == "\n":
            column, comment, url = 0, False, False
        else:
            column += 1
        if quote is None and ch in "\"'":
            quote = ch
        elif ch == quote:
            quote = None
        if ch in "([{":
            depth += 1
        elif ch in ")]}" and depth > 0:
            depth -= 1
        if ch == "#" and quote is None:
            comment = True
        joined = "".join(str(c) for c in text[max(0, t - 7):t + 1])
        if joined.endswith("http://") or joined.endswith("https://") or joined.endswith("www."):
            url = True
        elif ch.isspace():
            url = False
        feats["inside quotes"][t] = quote is not None
        feats["inside parentheses/brackets"][t] = depth > 0
        feats["bracket depth"][t] = depth
        feats["position in line"][t] = column
        feats["inside a comment"][t] = comment
        feats["start of a word"][t] = ch.isalnum() and not previous.isalnum()
        feats["inside a URL"][t] = url
        previous = ch
    return feats


def correlations(activations: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of every unit with the feature: activations [steps, units] ->
    [units]; 0 where either is constant."""
    a = activations - activations.mean(0)
    f = feature - feature.mean()
    denom = a.norm(dim=0) * f.norm()
    return torch.where(denom > 0, (a * f[:, None]).sum(0) / denom.clamp_min(1e-12),
                       torch.zeros_like(denom))


def discover(rec: Recording, per_feature: int = 3) -> list:
    """The units that track each text feature best, strongest first:
    [{"feature", "layer", "unit", "r"}], features that never vary are skipped."""
    found = []
    steps, layers, units = rec.cell.shape
    flat = rec.cell.reshape(steps, layers * units)
    for name, feature in text_features(rec.text).items():
        if feature.std() == 0:
            continue
        r = correlations(flat, feature)
        for idx in r.abs().argsort(descending=True)[:per_feature].tolist():
            found.append({"feature": name, "layer": idx // units, "unit": idx % units,
                          "r": round(float(r[idx]), 3)})
    found.sort(key=lambda f: -abs(f["r"]))
    return found
