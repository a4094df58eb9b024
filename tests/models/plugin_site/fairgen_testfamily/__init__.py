"""A model family from outside fairgen, installed as pip would leave it (a *.dist-info with entry_points.txt
beside the package): the conformance suite puts this directory on sys.path and builds `testfamily:<arg>`
through the registry exactly as it builds a built-in.

The model is fairgen-tiny's architecture at a width the `width` option sets, randomly initialised from
the `seed` option, on the device and in the dtype the registry passes: a real (untrained) unified model,
so every capability the entry declares can be exercised."""

from __future__ import annotations

import torch

from fairgen.models.registry import DTYPE, Family, Option, integer
from fairgen.models.tiny import TinyModel
from fairgen.models.tiny.model import LMConfig, TinyLM
from fairgen.models.tiny.text import Vocab, lexicon
from fairgen.models.tiny.tokenizer import TokenizerConfig, VisionTokenizer

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class TestFamilyModel(TinyModel):
    """A randomly initialised fairgen-tiny that records how the registry built it."""

    def __init__(self, arg: str, device: str | None = None, dtype: str = "fp32", width: int = 32,
                 seed: int = 0) -> None:
        torch.manual_seed(seed)
        tok = VisionTokenizer(TokenizerConfig(width=16))
        words = lexicon(["A photo of the face of a nurse, a person", "female male judge firefighter"])
        vocab = Vocab(tok.cfg.n_codes, tok.cfg.n_tokens, words)
        lm = TinyLM(LMConfig(vocab_size=vocab.size, n_image_tokens=vocab.n_image_tokens, n_layer=1, n_head=2,
                             n_embd=width))
        target = torch.device(device or "cpu")
        super().__init__(tok.to(target), lm.to(target, DTYPES[dtype]), words=words)
        self.spec = f"testfamily:{arg}" if arg else "testfamily"
        self.built_with = {"arg": arg, "device": device, "dtype": dtype, "width": width, "seed": seed}

    def provenance(self) -> dict:
        return {"family": "testfamily", **self.built_with}


FAMILY = Family(
    name="testfamily", constructor=TestFamilyModel, spec="testfamily[:<anything>]",
    description="a plugin for fairgen's tests: a random fairgen-tiny of a chosen width",
    capabilities=frozenset({"generate", "understand", "image_logprob", "tokenize", "lora", "lm_hooks",
                            "tokenizer_features", "understanding_features", "caption"}),
    arg="optional",
    options={"dtype": DTYPE, "width": Option("hidden size of the language model", integer),
             "seed": Option("seed of the random initialisation", integer)},
    requirements="torch",
)
