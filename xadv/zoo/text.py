"""A small token classifier on a synthetic task with planted tokens, so the right
explanation is known: the class is decided by the planted tokens only.

Task (:func:`planted_tokens`): sequences of ``length`` token ids over a vocabulary of
``vocab``; id 0 is padding, ids 2-5 are the planted words (2, 3 vote for class 1;
4, 5 for class 0), ids 6 and up are filler. Every sequence has 1-3 planted tokens of
its class at random positions, random filler elsewhere and a random amount of
trailing padding. A faithful token explanation ranks the planted positions first.

Train the shipped weights with ``python -m xadv.zoo.text --out assets/`` (seeded,
seconds on one CPU thread).

>>> import xadv
>>> from xadv.zoo.text import planted_tokens
>>> ids, y, planted = planted_tokens(200, seed=1)
>>> m = xadv.zoo.text_classifier()
>>> float((m(ids).argmax(1) == y).float().mean()) > 0.99
True
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

PAD = 0
POSITIVE = (2, 3)
NEGATIVE = (4, 5)
FILLER_START = 6
WORDS = {0: "<pad>", 1: "<unk>", 2: "great", 3: "superb", 4: "awful", 5: "dull"}


def vocabulary(vocab: int = 64) -> List[str]:
    """Readable names of the ids: planted words, then ``w6``, ``w7``, ... for filler."""
    return [WORDS.get(i, f"w{i}") for i in range(vocab)]


def planted_tokens(n: int, length: int = 16, vocab: int = 64, seed: int = 0
                   ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ids (n, length) long, labels (n,), planted (n, length) bool)`` of the task above."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    ids = torch.randint(FILLER_START, vocab, (n, length), generator=g)
    planted = torch.zeros(n, length, dtype=torch.bool)
    lengths = torch.randint(length // 2, length + 1, (n,), generator=g)
    for i in range(n):
        L = int(lengths[i])
        ids[i, L:] = PAD
        k = int(torch.randint(1, 4, (1,), generator=g))
        pos = torch.randperm(L, generator=g)[:k]
        words = POSITIVE if int(y[i]) == 1 else NEGATIVE
        ids[i, pos] = torch.tensor(words)[torch.randint(0, 2, (k,), generator=g)]
        planted[i, pos] = True
    return ids, y, planted


class TextClassifier(nn.Module):
    """``embedding`` (N, T) -> (N, T, D); a ``nn.Conv1d`` over neighbouring tokens with
    ``tanh``; masked max-pooling over the non-pad tokens; ``fc`` -> (N, classes).

    ``forward(ids, mask=None)``: ``mask`` (N, T) marks the real tokens (default
    ``ids != 0``), a pass-through argument for explainers (``forward_args=(mask,)``).
    Explain it through ``layer="embedding"``.
    """

    def __init__(self, vocab: int = 64, dim: int = 16, channels: int = 16, classes: int = 2):
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim, padding_idx=PAD)
        self.conv = nn.Conv1d(dim, channels, 3, padding=1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, ids: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if mask is None:
            mask = ids != PAD
        h = torch.tanh(self.conv(self.embedding(ids).transpose(1, 2)))       # (N, C, T)
        h = h.masked_fill(~mask.bool()[:, None, :], -1.0)
        return self.fc(h.max(dim=2).values)


def train(seed: int = 0, n: int = 4000, epochs: int = 8, batch: int = 64, lr: float = 1e-2):
    """Train :class:`TextClassifier` on :func:`planted_tokens`; returns (model, record)."""
    torch.manual_seed(seed)
    ids, y, _ = planted_tokens(n, seed=seed)
    ids_test, y_test, _ = planted_tokens(1000, seed=seed + 1)
    model = TextClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            loss = F.cross_entropy(model(ids[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(ids_test).argmax(1) == y_test).float().mean())
        acc_train = float((model(ids).argmax(1) == y).float().mean())
    record = {"model": "text_classifier", "dataset": "planted_tokens (xadv.zoo.text), length 16, vocab 64",
              "n_train": n, "n_test": 1000, "train_accuracy": acc_train, "test_accuracy": acc, "seed": seed,
              "epochs": epochs, "train_seconds": round(time.perf_counter() - t0, 1),
              "torch": torch.__version__, "file": "text_classifier.pt"}
    return model, record


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="train the shipped text_classifier weights")
    p.add_argument("--out", default="assets", help="folder for text_classifier.pt / .json")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    model, record = train(a.seed)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / "text_classifier.pt")
    (out / "text_classifier.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":  # pragma: no cover
    main()
