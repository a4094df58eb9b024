"""`tokenflow:<dir>`: TokenFlow (ByteFlow-AI, CVPR 2025) text-to-image, native: no upstream code or fetch.

Two parts, loaded from the released files:
  <dir>        ByteFlow-AI/TokenFlow-t2i: config.json (model_type llava_llama), the Llama-2-7B weights with
               TokenFlow's additions (tokenflow_lm.py), the Llama tokenizer with [PAD] and 32768 <vq_token_i>
  tokenizer    the CLIP-B tokenizer checkpoint of ByteFlow-AI/TokenFlow, tokenflow_clipb_32k_enhanced.pt
               (tokenflow_vq.py), from --model-option tokenizer=PATH, else config.json's mm_vision_tower
               when that file exists (absolute or inside <dir>), else the one *.pt inside <dir>

Prompt: BOS + the prompt's tokens, cut to 128 or left-padded with [PAD] to 128, then the tokens of "<img>".
Generation is next-scale prediction over 9 scales (817 codes, tokenflow_lm.py), with classifier-free
guidance against a fixed negative prompt (NEGATIVE_PROMPT, upstream's), whose weight ramps linearly over
the scales: w_k = 1 + (cfg - 1) * k / 8, so the first scale is unguided. `cfg` here is the guidance weight at
the last scale in fairgen's convention (1 = no guidance, no negative rows): upstream's `--cfg 7.5` is
cfg=8.5 here (upstream writes the guided logits as (1 + t) * cond - t * uncond with t = 7.5 * k / 8).
Defaults are upstream's `run_t2i.sh` (loop 1): top-k 600, then top-p 0.6, temperature 1.

The understanding model (Tokenflow-llava-qwen2.5-14B, ChatML on Qwen2 over the SigLIP tokenizer's
features) is a different LLM with a different tokenizer; this family does not load it, so TokenFlow has no
"understand" capability here and `fairgen locate` skips the understanding probe and says so.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..store import file_sha256
from ..types import FairgenError, Prompt, prompt_text
from .engine import auto_batch, in_batches
from .hf.checks import check_batch
from .hf.images import to_pil
from .hf.loading import CHECKPOINT_PATTERNS, Fingerprint, linear_names, resolve_device, resolve_dtype
from .sampling import Sampling, sample, uniform_table
from .tokenflow_lm import Decoder, KVCache, full_mask
from .tokenflow_vq import TokenFlowTokenizer, load_tokenizer

FAMILY = "tokenflow"
RECOMMENDED = Sampling(cfg=8.5, temperature=1.0, top_p=0.6, top_k=600)
NEGATIVE_PROMPT = (
    "lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, "
    "cropped, worst quality, low quality, normal quality, jpeg artifacts, signature, watermark, "
    "username, blurry."
)
TEXT_TOKENS = 128  # upstream's max_text_token_num
IMAGE_START = "<img>"
CODE_TOKEN = "<vq_token_{}>"
CHUNK = 8192  # code positions per head + sampler call (bounds the [rows, 32768] float32 logits)


class TokenFlowT2I(torch.nn.Module):
    """The checkpoint's module tree: `model.` (tokenflow_lm.Decoder) and `lm_head.`. Gradient checkpointing
    is switched by transformers' method names, which `fairgen fix` calls on a LoRA root that supports it
    (a 7B BPO step otherwise holds every layer's activations over 2 x 947 positions per image)."""

    supports_gradient_checkpointing = True

    def __init__(self, cfg, tokenizer: TokenFlowTokenizer) -> None:
        super().__init__()
        self.model = Decoder(
            cfg, tokenizer.n_tokens, len(tokenizer.scales) + 1, sum(tokenizer.quantize.split)
        )
        self.lm_head = torch.nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        self.model.checkpointing = True  # non-reentrant always (the kwargs fix asks for)

    def gradient_checkpointing_disable(self) -> None:
        self.model.checkpointing = False


class TokenFlowModel:
    """TokenFlow text-to-image behind the unified model protocol (see the module docstring).

    Built by `from_checkpoint` (what `tokenflow:<dir>` calls), or from modules in memory (benchmarks)."""

    def __init__(
        self,
        lm: TokenFlowT2I,
        vq: TokenFlowTokenizer,
        text: Any,
        spec: str,
        fingerprint: Fingerprint | None = None,
        tokenizer_path: Path | None = None,
    ) -> None:
        """From built parts (`from_checkpoint` reads them from the released files): the LM and tokenizer on
        one device in one dtype, and the text tokenizer holding [PAD] and the <vq_token_i> codes."""
        self.hf, self.vq, self.text, self.spec = lm, vq, text, spec
        self.fingerprint, self.tokenizer_path = fingerprint, tokenizer_path
        self.dtype = lm.lm_head.weight.dtype
        cfg = lm.model.config
        self.pad_id = self.text.convert_tokens_to_ids("[PAD]")
        self.code_start = self.text.convert_tokens_to_ids(CODE_TOKEN.format(0))
        last = self.text.convert_tokens_to_ids(CODE_TOKEN.format(self.vq.n_codes - 1))
        if last != self.code_start + self.vq.n_codes - 1 or last >= cfg.vocab_size:
            raise FairgenError(
                f"{FAMILY}: the tokenizer's {CODE_TOKEN.format('i')} tokens are not "
                f"{self.vq.n_codes} consecutive ids inside the LM's vocabulary"
            )
        self.start_ids = self.text.encode(IMAGE_START, add_special_tokens=False)
        self.defaults = RECOMMENDED
        # The LM decoder's projections (attention and MLP); not the projector or the tokenizer.
        self.lora_targets: list[str] = linear_names(self.hf, "model.layers.")
        self.scales = self.vq.scales
        self.n_image_tokens = self.vq.n_tokens
        self.offsets = np.cumsum([0, *(s * s for s in self.scales)]).tolist()

    # -- what the protocol and LoRA see ------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.hf.lm_head.weight.device

    @property
    def language_model(self) -> torch.nn.Module:
        return self.hf.model

    @property
    def lora_root(self) -> torch.nn.Module:
        return self.hf

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str,
        tokenizer: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
    ) -> TokenFlowModel:
        """checkpoint: the TokenFlow-t2i directory (or hub id); tokenizer: the CLIP tokenizer .pt (see the
        module docstring for where it is looked for); device, dtype: as for the transformers families
        (bf16 on GPU, fp32 on CPU by default)."""
        from transformers import AutoTokenizer, LlamaConfig
        from transformers.utils import logging

        path, revision = _resolve(checkpoint)
        raw = json.loads((path / "config.json").read_text())
        if raw.get("model_type") != "llava_llama":
            raise FairgenError(
                f"{FAMILY}: {path} is a {raw.get('model_type')!r} checkpoint, not TokenFlow-t2i "
                "(model_type 'llava_llama')"
            )
        tokenizer_path = _tokenizer_file(path, raw, tokenizer)
        target = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, target)
        vq = load_tokenizer(tokenizer_path).to(target, torch_dtype)
        cfg = LlamaConfig(**{k: v for k, v in raw.items() if k not in ("architectures", "model_type")})
        with torch.device("meta"):
            lm = TokenFlowT2I(cfg, vq)
        lm.load_state_dict(_weights(path), assign=True)
        lm.model.reset_rope()
        lm.to(target, torch_dtype).eval().requires_grad_(False)
        verbosity = logging.get_verbosity()
        logging.set_verbosity_error()  # AutoTokenizer reads config.json and warns that llava_llama is unknown
        try:
            text = AutoTokenizer.from_pretrained(path)
        finally:
            logging.set_verbosity(verbosity)
        if text.convert_tokens_to_ids("[PAD]") in (None, text.unk_token_id):
            text.add_special_tokens({"pad_token": "[PAD]"})  # what upstream's inference does
        return cls(
            lm, vq, text, f"{FAMILY}:{checkpoint}", Fingerprint(path, checkpoint, revision), tokenizer_path
        )

    def provenance(self) -> dict[str, Any]:
        if self.fingerprint is None:
            return {
                "family": FAMILY,
                "source": "built in memory (no checkpoint)",
                "dtype": str(self.dtype).removeprefix("torch."),
            }
        return {
            "family": FAMILY,
            **self.fingerprint.as_dict(),
            "tokenizer": {"path": str(self.tokenizer_path), "sha256": file_sha256(self.tokenizer_path)},
            "dtype": str(self.dtype).removeprefix("torch."),
            "default_sampling": self.defaults.as_dict(),
        }

    # -- building the sequence ---------------------------------------------------------------------------
    def prompt_ids(self, prompts: Sequence[Prompt | str]) -> torch.Tensor:
        """[B, 128 + len(<img> tokens)]: [PAD]... BOS text, cut to 128 (keeping the start), then <img>."""
        rows = []
        for p in prompts:
            ids = self.text.encode(prompt_text(p))
            if not ids or ids[0] != self.text.bos_token_id:
                ids = [self.text.bos_token_id, *ids]
            ids = ids[:TEXT_TOKENS]
            rows.append([self.pad_id] * (TEXT_TOKENS - len(ids)) + ids + self.start_ids)
        return torch.tensor(rows, device=self.device)

    def _rows(self, prompts: Sequence[Prompt | str], guided: bool) -> torch.Tensor:
        ids = self.prompt_ids(prompts)
        return torch.cat([ids, self.prompt_ids([NEGATIVE_PROMPT]).expand_as(ids)]) if guided else ids

    def _text_embeds(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings + level row 0 everywhere, + position row 0 on the last prompt token."""
        lm = self.hf.model
        x = lm.embed_tokens(ids) + lm.lvl_embed.weight[0]
        return torch.cat([x[:, :-1], x[:, -1:] + lm.pos_1LC[:1]], dim=1)

    def _image_embeds(self, features: torch.Tensor, k: int) -> torch.Tensor:
        """The LM inputs of scale k >= 1 from its features [B, s_k^2, 40] (made from the earlier scales)."""
        lm = self.hf.model
        a, b = self.offsets[k], self.offsets[k + 1]
        return lm.mm_projector(features.to(self.dtype)) + lm.lvl_embed.weight[k + 1] + lm.pos_1LC[a:b]

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Image-code logits (float32) of hidden states [..., D]: the LM head's code rows only."""
        w = self.hf.lm_head.weight[self.code_start : self.code_start + self.vq.n_codes]
        return torch.nn.functional.linear(hidden, w).float()

    # -- generation --------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_tokens(
        self, prompts: Sequence[Prompt | str], seeds: Sequence[int], engine: bool = True, **sampling: Any
    ) -> torch.Tensor:
        """Codes LongTensor [B, 817] of one image per (prompt, seed). engine: one forward per scale with a
        KV cache, in batches that fit the free memory; False: upstream's loop, the whole sequence again at
        every scale (the reference the engine is tested and benchmarked against), one batch."""
        check_batch(FAMILY, prompts, seeds, "seeds")
        s = self.defaults.resolve(sampling, FAMILY)
        twins = 2 if s.cfg != 1.0 else 1
        if not engine:
            return self._codes(prompts, seeds, s, cached=False)
        length = len(self.prompt_ids(prompts[:1])[0]) + self.n_image_tokens - 1
        batch = auto_batch(self.hf.model, length, twins)
        return in_batches(
            lambda a, b: self._codes(prompts[a:b], seeds[a:b], s, cached=True), len(prompts), batch
        )

    def _codes(
        self, prompts: Sequence[Prompt | str], seeds: Sequence[int], s: Sampling, cached: bool
    ) -> torch.Tensor:
        guided = s.cfg != 1.0
        ids = self._rows(prompts, guided)
        n, p = ids.shape
        valid = torch.cat([ids != self.pad_id, ids.new_ones(n, self.n_image_tokens - 1, dtype=torch.bool)], 1)
        uniforms = uniform_table(seeds, self.n_image_tokens, self.device)
        x = self._text_embeds(ids)
        codes: list[torch.Tensor] = []
        running: torch.Tensor | float = 0.0
        lm, last = self.hf.model, len(self.scales) - 1
        cache = (
            KVCache(lm.config, n, p + self.n_image_tokens - 1, self.dtype, self.device) if cached else None
        )
        if cached:
            hidden = lm(x, full_mask(valid[:, :p], p, self.scales[:1])[..., :p, :p], 0, cache)[:, -1:]
        for k in range(len(self.scales)):
            if not cached:  # upstream: the whole sequence so far, again
                stop = p - 1 + self.offsets[k + 1]
                mask = full_mask(valid, p, self.scales)[..., :stop, :stop]
                hidden = lm(x, mask)[:, p - 1 + self.offsets[k] :]
            u = uniforms[:, self.offsets[k] : self.offsets[k + 1]].reshape(-1)
            code = self._sample(hidden, s, k / last, u).view(len(prompts), -1)
            codes.append(code)
            if k == last:
                break
            side, nxt = self.scales[k], self.scales[k + 1]
            vec = self.vq.quantize.codebook()[code].transpose(1, 2).reshape(len(prompts), -1, side, side)
            running = torch.nn.functional.interpolate(running + vec, size=(nxt, nxt), mode="bicubic")
            new = self._image_embeds(running.flatten(2).transpose(1, 2), k + 1)
            new = torch.cat([new, new]) if guided else new
            if cached:
                start = p - 1 + self.offsets[k + 1]
                mask = valid[:, None, None, : start + nxt * nxt].expand(-1, 1, nxt * nxt, -1)
                hidden = lm(new, mask, start, cache)
            else:
                x = torch.cat([x, new], dim=1)
        return torch.cat(codes, dim=1)

    def _sample(self, hidden: torch.Tensor, s: Sampling, ratio: float, u: torch.Tensor) -> torch.Tensor:
        """Codes of one scale from hidden states [N, n, D] (conditional rows first): guided as upstream,
        (1 + t) * cond - t * uncond with t = (cfg - 1) * ratio, then sampling.sample, CHUNK rows at a time."""
        rows = u.shape[0]
        flat = hidden.reshape(-1, hidden.shape[-1])
        t = (s.cfg - 1.0) * ratio
        out = []
        for a in range(0, rows, CHUNK):
            b = min(rows, a + CHUNK)
            logits = self._head(flat[a:b])
            if s.cfg != 1.0:
                logits = (1 + t) * logits - t * self._head(flat[rows + a : rows + b])
            out.append(sample(logits, s, u[a:b]))
        return torch.cat(out)

    def generate(
        self, prompts: Sequence[Prompt | str], seeds: Sequence[int], **sampling: Any
    ) -> list[Image.Image]:
        """One 256x256 image per (prompt, seed); the same prompt, seed and settings give the same image."""
        return self.decode_tokens(self.generate_tokens(prompts, seeds, **sampling))

    # -- the vision tokenizer ----------------------------------------------------------------------------
    def _pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Images -> [B, 3, S, S] in [-1, 1]: upstream's ADM centre crop (box-halve while the short side is
        at least 2S, bicubic resize of the short side to S, centre crop)."""
        size, out = self.vq.image_size, []
        for im in images:
            im = im.convert("RGB")
            while min(im.size) >= 2 * size:
                im = im.resize(tuple(x // 2 for x in im.size), resample=Image.BOX)
            scale = size / min(im.size)
            im = im.resize(tuple(round(x * scale) for x in im.size), resample=Image.BICUBIC)
            a = np.asarray(im)
            y, x = (a.shape[0] - size) // 2, (a.shape[1] - size) // 2
            out.append(torch.from_numpy(a[y : y + size, x : x + size].copy()))
        x = torch.stack(out).permute(0, 3, 1, 2).float() / 255.0
        return (x * 2 - 1).to(self.device, self.dtype)

    @torch.no_grad()
    def encode_image(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Codes LongTensor [B, 817] of images (scale by scale, row-major)."""
        return self.vq.encode(self._pixels(images))

    @torch.no_grad()
    def decode_tokens(self, tokens: torch.Tensor) -> list[Image.Image]:
        """Codes [B, 817] -> images (256x256 for the released tokenizer)."""
        return to_pil(self.vq.decode(tokens.to(self.device)), [0.5] * 3, [0.5] * 3)

    @torch.no_grad()
    def tokenizer_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """What the pixel decoder reads for each image: float32 [B, 40, 16, 16] (summed scales; 32 semantic
        then 8 pixel channels)."""
        return self.vq.summed(self.encode_image(images)).float().cpu()

    # -- language-model internals (locate's LM audit, fix's BPO) -----------------------------------------
    def image_token_logits(self, prompts: Sequence[Prompt | str], tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits over the codebook, float32 [B, 817, K], in one block-causal pass: row t is
        the distribution code t is sampled from (no guidance, temperature 1), given the prompt and the
        codes of the scales before t's. Differentiable w.r.t. the LM (and LoRA)."""
        check_batch(FAMILY, prompts, tokens, "token rows")
        tokens = tokens.to(self.device)
        ids = self.prompt_ids(prompts)
        n, p = ids.shape
        with torch.no_grad():
            features = self.vq.next_scale_inputs(tokens)
        images = [
            self._image_embeds(features[:, self.offsets[k] - 1 : self.offsets[k + 1] - 1], k)
            for k in range(1, len(self.scales))
        ]
        x = torch.cat([self._text_embeds(ids), *images], dim=1)
        valid = torch.cat([ids != self.pad_id, ids.new_ones(n, self.n_image_tokens - 1, dtype=torch.bool)], 1)
        hidden = self.hf.model(x, full_mask(valid, p, self.scales))[:, p - 1 :]
        return self._head(hidden)

    def token_logprob(self, prompts: Sequence[Prompt | str], tokens: torch.Tensor) -> torch.Tensor:
        """Mean per-code log-probability [B] of codes [B, 817] given each prompt (differentiable)."""
        logp = torch.log_softmax(self.image_token_logits(prompts, tokens), dim=-1)
        return logp.gather(-1, tokens.to(self.device).unsqueeze(-1)).squeeze(-1).mean(-1)

    def image_token_logprob(
        self, prompts: Sequence[Prompt | str], images: Sequence[Image.Image]
    ) -> torch.Tensor:
        """Mean per-code log-probability [B] of each image's codes given its prompt (differentiable)."""
        check_batch(FAMILY, prompts, images, "images")
        return self.token_logprob(prompts, self.encode_image(images))

    @torch.no_grad()
    def image_start_hidden(self, prompts: Sequence[Prompt | str]) -> torch.Tensor:
        """The LM's final hidden state at the last prompt token (it predicts scale 1): float32 [B, D]."""
        ids = self.prompt_ids(prompts)
        p = ids.shape[1]
        mask = full_mask(ids != self.pad_id, p, self.scales[:1])[..., :p, :p]
        return self.hf.model(self._text_embeds(ids), mask)[:, -1].float().cpu()


def _resolve(checkpoint: str) -> tuple[Path, str | None]:
    """The checkpoint directory (a local one, or a hub id fetched into the hub cache) and its hub revision."""
    if not checkpoint:
        raise FairgenError(f"model spec {FAMILY}:<TokenFlow-t2i directory> needs a checkpoint")
    path = Path(checkpoint).expanduser()
    if not path.exists() and checkpoint.count("/") == 1 and not checkpoint.startswith((".", "/", "~")):
        from huggingface_hub import snapshot_download

        try:
            path = Path(snapshot_download(checkpoint, allow_patterns=[*CHECKPOINT_PATTERNS, "*.bin"]))
        except Exception as e:  # noqa: BLE001  (offline, unknown repo: one answer)
            raise FairgenError(
                f"{FAMILY}: cannot fetch {checkpoint} ({str(e).splitlines()[0][:200]}); "
                "give a local directory"
            ) from None
        return path, path.name
    if not (path / "config.json").is_file():
        raise FairgenError(f"{FAMILY}: {path} is not a checkpoint directory (no config.json)")
    return path, None


def _tokenizer_file(path: Path, config: dict, given: str | None) -> Path:
    """The tokenizer .pt: as given, else config.json's mm_vision_tower if it exists, else the one *.pt."""
    if given:
        found = Path(given).expanduser()
        if not found.is_file():
            raise FairgenError(f"{FAMILY}: tokenizer {found} is not a file")
        return found
    named = config.get("mm_vision_tower")
    for candidate in [Path(named), path / named, path / Path(named).name] if named else []:
        if candidate.is_file():
            return candidate
    found = sorted(path.glob("*.pt"))
    if len(found) == 1:
        return found[0]
    raise FairgenError(
        f"{FAMILY}: which tokenizer? give --model-option tokenizer=PATH "
        "(tokenflow_clipb_32k_enhanced.pt from ByteFlow-AI/TokenFlow)"
    )


def _weights(path: Path) -> dict[str, torch.Tensor]:
    """The LM's state dict from *.safetensors, else *.bin (torch.load, weights_only=True)."""
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    if files:
        sd = {k: v for f in files for k, v in load_file(f).items()}
    else:
        files = sorted(path.glob("*.bin"))
        if not files:
            raise FairgenError(f"{FAMILY}: {path} holds no *.safetensors or *.bin weights")
        sd = {
            k: v
            for f in files
            for k, v in torch.load(f, map_location="cpu", weights_only=True, mmap=True).items()
        }
    return {k: v for k, v in sd.items() if not k.endswith("rotary_emb.inv_freq")}


def load(checkpoint: str, device: str | None = None, **options: Any) -> TokenFlowModel:
    """The registry's constructor (families.py, which checks the options): tokenizer (the .pt), dtype."""
    if "understanding" in options:
        raise FairgenError(
            f"{FAMILY}: the understanding model (Tokenflow-llava-qwen2.5-14B) is not supported "
            "yet; generation, the tokenizer and the LM audit work without it"
        )
    return TokenFlowModel.from_checkpoint(checkpoint, device=device, **options)


__all__ = ["NEGATIVE_PROMPT", "RECOMMENDED", "TokenFlowModel", "load"]
