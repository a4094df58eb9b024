"""`emu3:<hf id or dir>`: Emu3 (BAAI) through transformers' Emu3ForConditionalGeneration.

Emu3 has one vision tokenizer for both directions: a VQ model whose codes are ordinary vocabulary entries
("<|visual token000123|>") of one LM. An image of h x w codes is the token sequence

    <|image start|> "h*w" <|image token|>  row_1 <|extra_200|> ... row_h <|extra_200|>  <|extra_201|> <|image end|>

(<|extra_200|> ends a row). generate() samples only visual tokens inside a row and places the row ends
itself, as upstream's `prefix_allowed_tokens_fn` recipe does; guidance runs the unconditional rows in the
same batch (BAAI's recipe: the negative prompt below, with the same image prefix) and every image draws from
its own seeded random stream. Image codes are scored under the distribution generation samples from:
the LM's logits restricted to the visual tokens.

Checkpoints: BAAI/Emu3-Gen-hf (generation) and BAAI/Emu3-Chat-hf (understanding); both load, each is
good at its own half. Sampling defaults are the checkpoint's generation_config.json, else BAAI's published
recommendation: cfg 3.0, temperature 1.0, top-k 2048. Images are square, `image_area` pixels (default: the
processor's, 720x720 = 90x90 codes; smaller areas are much faster and off the model's training sizes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch
from PIL import Image

from ..types import FairgenError, Prompt, prompt_text
from .hf import chat, checks, decoding, loading
from .hf.images import to_pil
from .sampling import Sampling, sample, uniform_table

FAMILY = "emu3"
RECOMMENDED = Sampling(cfg=3.0, temperature=1.0, top_k=2048)
NEGATIVE_PROMPT = ("lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, "
                   "cropped, worst quality, low quality, normal quality, jpeg artifacts, signature, watermark, "
                   "username, blurry.")
SYSTEM_PROMPT = "You are a helpful assistant."
# Emu3-Chat's prompt format ("<system> USER: <image>{question} ASSISTANT: {answer}"), for checkpoints whose
# processor ships without a chat template (the converted Emu3 checkpoints do).
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'][0]['text'] }} "
    "{% else %}{{ m['role'] | upper }}: "
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% if not loop.last or add_generation_prompt %} {% endif %}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
SPATIAL_FACTOR = 8  # pixels per code side; fixed by Emu3Processor


class Emu3Model:
    """An Emu3 checkpoint behind the model protocols (the `emu3` family's constructor).

    checkpoint: a local directory or a hub id. device / dtype / device_map: as for JanusModel.
    image_area: pixels of a generated image (square). negative_prompt: the unconditional prompt of guidance.
    """

    def __init__(self, checkpoint: str, device: str | None = None, dtype: str | None = None,
                 device_map: str | dict | None = None, image_area: int | None = None,
                 negative_prompt: str = NEGATIVE_PROMPT) -> None:
        loading.require_transformers(FAMILY)
        from transformers import Emu3ForConditionalGeneration, Emu3Processor

        path, revision = loading.resolve_checkpoint(FAMILY, checkpoint)
        loading.check_model_type(FAMILY, path, "emu3")
        target = loading.resolve_device(device)
        self.dtype = loading.resolve_dtype(dtype, target)
        self.hf, self.processor = loading.load_pretrained(FAMILY, path, Emu3ForConditionalGeneration, Emu3Processor,
                                                     self.dtype, target, device_map)
        self.spec = f"{FAMILY}:{checkpoint}"
        self.fingerprint = loading.Fingerprint(path, checkpoint, revision)
        # Full names of the LM decoder's linear layers, listed before any LoRA is injected (the VQ model has
        # convolutions and an attention block of its own, which stay frozen).
        self.lora_targets: list[str] = loading.linear_names(self.hf, "model.text_model.layers.")
        self.tokenizer = self.processor.tokenizer
        self.negative_prompt = negative_prompt
        self.chat = chat.ChatFormat(SYSTEM_PROMPT, self.processor.chat_template or CHAT_TEMPLATE)
        self.image_area = int(image_area or self.processor.image_area)
        if self.image_area < SPATIAL_FACTOR ** 2:
            raise FairgenError(f"{FAMILY}: image_area must be at least {SPATIAL_FACTOR ** 2} pixels (got {image_area})")
        self.grid = self.processor.calculate_generate_size("1:1", self.image_area, SPATIAL_FACTOR)  # (h, w) codes
        self.defaults = loading.generation_defaults(self.hf.generation_config, RECOMMENDED)
        mapping = self.hf.vocabulary_mapping
        n_codes = self.hf.config.vq_config.codebook_size
        # code c -> its vocabulary id; sampling over these ids' logits gives the code directly.
        self.code_ids = mapping.img2bpe_mapping_tensor[:n_codes].long().to(self.device)
        self.eol_id = mapping.eol_token_id

    @property
    def device(self) -> torch.device:
        """Where inputs go: the device of the LM's token embeddings."""
        return self.hf.get_input_embeddings().weight.device

    @property
    def language_model(self) -> torch.nn.Module:
        """The decoder over text and visual tokens."""
        return self.hf.model.text_model

    @property
    def lora_root(self) -> torch.nn.Module:
        """The module `lora_targets` names are relative to (the whole transformers model)."""
        return self.hf

    def provenance(self) -> dict[str, Any]:
        """Checkpoint source, hub revision, sha256 of its files, dtype, image size, defaults."""
        return {"family": FAMILY, **self.fingerprint.as_dict(), "dtype": str(self.dtype).removeprefix("torch."),
                "image_area": self.image_area, "default_sampling": asdict(self.defaults),
                "negative_prompt": self.negative_prompt}

    def _visual_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM logits restricted to the visual tokens, indexed by code: [..., n_codes] float32."""
        return (hidden @ self.hf.lm_head.weight[self.code_ids].T).float()

    def _generation_inputs(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded (input_ids, attention_mask) of "<bos>{text}<|image start|>h*w<|image token|>"."""
        enc = self.processor(text=texts, return_for_image_generation=True, image_area=self.image_area,
                             padding=True, padding_side="left", return_tensors="pt")
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    @torch.no_grad()
    def generate_tokens(self, prompts: Sequence[Prompt | str], seeds: Sequence[int], **sampling: Any) -> torch.Tensor:
        """Sample the codes of one image per (prompt, seed): LongTensor [B, h*w] (row-major grid).

        sampling: cfg, temperature, top_p, top_k (defaults: see the module docstring)."""
        checks.check_batch(FAMILY, prompts, seeds, "seeds")
        s = self.defaults.resolve(sampling, FAMILY)
        texts = [prompt_text(p) for p in prompts]
        rows = 2 if s.cfg != 1.0 else 1
        ids, mask = self._generation_inputs(texts + [self.negative_prompt] * len(texts) * (rows - 1))
        embed = self.hf.get_input_embeddings()
        h, w = self.grid
        decoder = decoding.CachedDecoder(self.language_model, mask)
        uniforms = uniform_table(seeds, h * w, self.device)
        hidden = decoder(embed(ids))[:, -1]
        codes = []
        for i in range(h * w):
            code = sample(s.guide(self._visual_logits(hidden)), s, uniforms[:, i])
            codes.append(code)
            if i == h * w - 1:
                break
            step = self.code_ids[code].repeat(rows).unsqueeze(1)
            if i % w == w - 1:  # end of a row: the model reads the row-end token before the next row
                step = torch.cat([step, torch.full_like(step, self.eol_id)], dim=1)
            hidden = decoder(embed(step))[:, -1]
        return torch.stack(codes, dim=1)

    def generate(self, prompts: Sequence[Prompt | str], seeds: Sequence[int], **sampling: Any) -> list[Image.Image]:
        """One square image per (prompt, seed), 8 px per code side. The same prompt, seed and settings give
        the same image; within float noise of the batch's padding, whatever else is in the batch."""
        return self.decode_tokens(self.generate_tokens(prompts, seeds, **sampling))

    def _pixels(self, images: Sequence[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images resized to the generation grid -> (pixel_values [B, 3, 8h, 8w], image_sizes [B, 2])."""
        h, w = self.grid
        resized = [im.convert("RGB").resize((w * SPATIAL_FACTOR, h * SPATIAL_FACTOR), Image.BICUBIC) for im in images]
        enc = self.processor.image_processor(resized, do_resize=False, return_tensors="pt")
        return enc["pixel_values"].to(self.device, self.dtype), enc["image_sizes"]

    @torch.no_grad()
    def encode_image(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """VQ codes of images at the generation grid: LongTensor [B, h*w]."""
        pv, sizes = self._pixels(images)
        codes = self.hf.model.vqmodel.encode(pv, sizes).image_tokens
        return torch.stack([c.reshape(-1) for c in codes]).long()

    @torch.no_grad()
    def decode_tokens(self, tokens: torch.Tensor) -> list[Image.Image]:
        """Codes [B, h*w] of the generation grid (or any square grid) -> images."""
        n = tokens.shape[1]
        h, w = self.grid if self.grid[0] * self.grid[1] == n else (round(n ** 0.5),) * 2
        if h * w != n:
            raise FairgenError(f"{FAMILY}: {n} codes do not form the {self.grid} grid or a square one")
        pixels = self.hf.model.vqmodel.decode(tokens.to(self.device).view(-1, h, w))
        ip = self.processor.image_processor
        return to_pil(pixels, ip.image_mean, ip.image_std)

    @torch.no_grad()
    def understanding_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """What the LM sees of each image: the input embeddings of its codes at the generation grid,
        float32 [B, h*w, D]. (Emu3 has no separate understanding encoder: the VQ tokenizer serves both.)"""
        codes = self.encode_image(images)
        return self.hf.get_input_embeddings()(self.code_ids[codes]).float().cpu()

    def answer_distribution(self, image: Image.Image | None, question: str, options: Sequence[str]) -> dict[str, float]:
        """Exact probability of each option as the whole answer (its tokens and end of sentence) after
        "You are a helpful assistant. USER: [<image>]{question} ASSISTANT:" (or the checkpoint's chat template);
        renormalised over the options, with the mass outside them under OTHER."""
        return chat.answer_distribution(self, self.chat, image, question, options, FAMILY)

    def caption_logprob(self, images: Sequence[Image.Image], texts: Sequence[str], question: str) -> torch.Tensor:
        """Mean per-token log-probability [B] of texts[i] as the answer to `question` about images[i], in
        answer_distribution's format; differentiable w.r.t. the LM (and LoRA)."""
        return chat.caption_logprob(self, self.chat, images, texts, question, FAMILY)

    def token_logprob(self, prompts: Sequence[Prompt | str], tokens: torch.Tensor) -> torch.Tensor:
        """Mean per-code log-probability of codes [B, h*w] given each prompt, under the LM's logits restricted
        to visual tokens (no guidance, temperature 1): float32 [B], differentiable w.r.t. the LM (and LoRA).
        Row-end tokens are fed but not scored: generation places them, it does not sample them."""
        logp = torch.log_softmax(self.image_token_logits(prompts, tokens), dim=-1)
        return logp.gather(-1, tokens.to(self.device).unsqueeze(-1)).squeeze(-1).mean(-1)

    # -- language-model internals (locate's LM audit) ---------------------------------------------------
    def image_token_logits(self, prompts: Sequence[Prompt | str], tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits over the visual tokens at every code position: float32 [B, h*w, codebook];
        row t is the distribution code t is sampled from (no guidance, temperature 1) given the prompt and
        the codes (and row ends) before it. tokens: codes [B, h*w]. Differentiable w.r.t. the LM (and LoRA)."""
        checks.check_batch(FAMILY, prompts, tokens, "token rows")
        h, w = self.grid
        if tokens.shape[1] != h * w:
            raise FairgenError(f"{FAMILY}: expected {h * w} codes per image (grid {h}x{w}), got {tokens.shape[1]}")
        ids, mask = self._generation_inputs([prompt_text(p) for p in prompts])
        tokens = tokens.to(self.device)
        rows = self.code_ids[tokens].view(-1, h, w)
        rows = torch.cat([rows, torch.full_like(rows[:, :, :1], self.eol_id)], dim=2).flatten(1)  # [B, h*(w+1)]
        seq = torch.cat([ids, rows[:, :-1]], dim=1)
        mask = torch.cat([mask, mask.new_ones(rows.shape[0], rows.shape[1] - 1)], dim=1)
        embeds = self.hf.get_input_embeddings()(seq)
        out = self.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=decoding.positions(mask))
        # Hidden states that predict row tokens start at <|image token|>; keep those predicting a code.
        hidden = out.last_hidden_state[:, ids.shape[1] - 1:].view(-1, h, w + 1, embeds.shape[-1])[:, :, :w]
        return self._visual_logits(hidden.flatten(1, 2))

    @torch.no_grad()
    def image_start_hidden(self, prompts: Sequence[Prompt | str]) -> torch.Tensor:
        """The LM's last hidden state at <|image token|> (which predicts the first code): float32 [B, D]."""
        ids, mask = self._generation_inputs([prompt_text(p) for p in prompts])
        out = self.language_model(inputs_embeds=self.hf.get_input_embeddings()(ids), attention_mask=mask,
                                  position_ids=decoding.positions(mask))
        return out.last_hidden_state[:, -1].float().cpu()

    @torch.no_grad()
    def tokenizer_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The VQ code vectors of each image on the generation grid, as the VQ decoder reads them: float32
        [B, C, h, w] (C = the codebook's embedding size)."""
        codes = self.encode_image(images)
        h, w = self.grid
        vectors = self.hf.model.vqmodel.quantize.embedding(codes)  # [B, h*w, C]
        return vectors.view(len(codes), h, w, -1).permute(0, 3, 1, 2).float().cpu()

    def image_token_logprob(self, prompts: Sequence[Prompt | str], images: Sequence[Image.Image]) -> torch.Tensor:
        """Mean per-code log-probability [B] of each image's codes given its prompt (differentiable)."""
        checks.check_batch(FAMILY, prompts, images, "images")
        return self.token_logprob(prompts, self.encode_image(images))


__all__ = ["CHAT_TEMPLATE", "NEGATIVE_PROMPT", "RECOMMENDED", "Emu3Model"]
