"""The unified vocabulary of fairgen-tiny: UTF-8 bytes, a few special tokens, the image codes, then words.

    ids 0..255                  text, one token per UTF-8 byte (any text is encodable)
    ids 256..256+len(SPECIALS)  special tokens
    ids image_offset..          the vision tokenizer's codes, code c -> image_offset + c
    ids word_offset..size-1     whole words of a fixed lexicon (the checkpoint's `words`)

Why words: real U-MLLMs read BPE tokens, in which "nurse" or "female" is one token. With bytes only, the
language model has to assemble a concept's identity from its letters before it can condition an image on
it; trained on ~630 occupations it learnt the unconditional image distribution first and never left it
(the 2026-11-28 checkpoint drew the same images for every prompt). A maximal run of ASCII letters that is
in the lexicon becomes one token; everything else (other words, spaces, punctuation, non-Latin scripts)
stays bytes, so any text is still encodable. A lexicon-free Vocab is the bytes-only vocabulary.

Sequence formats (the language model is trained on exactly these):
    generation     <bos> text <boi> img_0 .. img_{T-1} <eoi>        (unconditional: empty text)
    understanding  <bos> [<boi> img_0 .. img_{T-1} <eoi>] question <ans> answer <eos>
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from ...types import FairgenError

N_BYTES = 256
SPECIALS = ("<pad>", "<bos>", "<eos>", "<boi>", "<eoi>", "<ans>")
# What a word token can stand for: a maximal run of ASCII letters.
WORD = re.compile(r"[A-Za-z]+")


def lexicon(texts: Iterable[str]) -> tuple[str, ...]:
    """The sorted set of words (maximal ASCII-letter runs) occurring in texts: a checkpoint's word list."""
    return tuple(sorted({w for t in texts for w in WORD.findall(t)}))


@dataclass(frozen=True)
class Vocab:
    """Token ids of the unified vocabulary for a vision tokenizer with `n_codes` codes and `n_image_tokens`
    tokens per image, and the word tokens `words` (empty: bytes only)."""

    n_codes: int
    n_image_tokens: int
    words: tuple[str, ...] = ()

    pad = N_BYTES + 0
    bos = N_BYTES + 1
    eos = N_BYTES + 2
    boi = N_BYTES + 3
    eoi = N_BYTES + 4
    ans = N_BYTES + 5
    image_offset = N_BYTES + len(SPECIALS)

    @property
    def word_offset(self) -> int:
        return self.image_offset + self.n_codes

    @property
    def size(self) -> int:
        return self.word_offset + len(self.words)

    def is_image(self, ids: Any) -> Any:
        """Whether ids are image codes: a bool for an int, elementwise for a numpy array or tensor."""
        return (ids >= self.image_offset) & (ids < self.word_offset)

    @cached_property
    def _word_ids(self) -> dict[str, int]:
        return {w: self.word_offset + i for i, w in enumerate(self.words)}

    def text(self, s: str) -> list[int]:
        """Tokens of a string: lexicon words as word tokens, everything else as UTF-8 bytes."""
        if not self.words:
            return list(s.encode("utf-8"))
        out: list[int] = []
        last = 0
        for m in WORD.finditer(s):
            wid = self._word_ids.get(m.group())
            if wid is None:
                continue
            out += s[last : m.start()].encode("utf-8")
            out.append(wid)
            last = m.end()
        out += s[last:].encode("utf-8")
        return out

    def image(self, codes: torch.Tensor) -> list[int]:
        """<boi> codes <eoi> as vocabulary ids; codes: LongTensor[T] of tokenizer codes."""
        if codes.shape != (self.n_image_tokens,):
            raise FairgenError(f"expected {self.n_image_tokens} image codes, got shape {tuple(codes.shape)}")
        return [self.boi, *(codes + self.image_offset).tolist(), self.eoi]

    def generation_prefix(self, text: str) -> list[int]:
        """What image generation is conditioned on: <bos> text <boi>."""
        return [self.bos, *self.text(text), self.boi]

    def question_prefix(self, image_codes: torch.Tensor | None, question: str) -> list[int]:
        """What an answer is conditioned on: <bos> [<boi> img <eoi>] question <ans>."""
        img = self.image(image_codes) if image_codes is not None else []
        return [self.bos, *img, *self.text(question), self.ans]

    def answer(self, option: str) -> list[int]:
        """An answer's tokens, including the end-of-answer token that makes it a complete answer."""
        return [*self.text(option), self.eos]

    def decode_text(self, ids: list[int]) -> str:
        """Readable text of a token list (specials by name, image codes as <img:c>), for debugging."""
        out: list[str] = []
        raw = bytearray()
        for i in ids:
            if i < N_BYTES:
                raw.append(i)
                continue
            out.append(raw.decode("utf-8", "replace"))
            raw = bytearray()
            if i >= self.word_offset:
                out.append(self.words[i - self.word_offset])
            else:
                out.append(SPECIALS[i - N_BYTES] if i < self.image_offset else f"<img:{i - self.image_offset}>")
        out.append(raw.decode("utf-8", "replace"))
        return "".join(out)


def image_positions(rows: list[list[int]], vocab: Vocab) -> list[list[int]]:
    """Per token, its index inside the image it belongs to (0..T-1), or T for a token outside any image.

    Added to the sequence position as a second embedding, so the model knows where on the 2-D grid an image
    token sits whatever the prompt length before it."""
    out = []
    for row in rows:
        idx, k = [], None
        for tok in row:
            if k is not None and vocab.is_image(tok):
                idx.append(k)
                k += 1
            else:
                idx.append(vocab.n_image_tokens)
                k = 0 if tok == vocab.boi else None
        out.append(idx)
    return out


def left_pad(
    rows: list[list[int]], vocab: Vocab, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad token rows to one length, for generation and scoring.

    Returns (ids, valid, pos, img_pos), each [B, L]: ids (pad where invalid), valid (bool, False on padding),
    pos (0 at each row's first real token, so padding changes no position) and img_pos (image_positions)."""
    length = max(len(r) for r in rows)
    ip = image_positions(rows, vocab)
    ids = torch.full((len(rows), length), vocab.pad, dtype=torch.long)
    img = torch.full((len(rows), length), vocab.n_image_tokens, dtype=torch.long)
    valid = torch.zeros((len(rows), length), dtype=torch.bool)
    for b, (r, p) in enumerate(zip(rows, ip)):
        ids[b, length - len(r) :] = torch.tensor(r, dtype=torch.long)
        img[b, length - len(r) :] = torch.tensor(p, dtype=torch.long)
        valid[b, length - len(r) :] = True
    pos = (valid.long().cumsum(1) - 1).clamp(min=0)
    return ids.to(device), valid.to(device), pos.to(device), img.to(device)
