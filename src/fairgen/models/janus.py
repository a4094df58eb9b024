"""`janus:<hf id or dir>`: Janus and Janus-Pro (DeepSeek) through transformers' JanusForConditionalGeneration.

Janus has two vision paths, and this adapter exposes both:
  understanding  SigLIP encoder -> aligner -> image placeholder embeddings of the Llama LM -> lm_head (text)
  generation     LM -> generation_head (logits over the VQ codebook) -> sampled code -> generation_embeddings
                 -> generation_aligner -> next LM input; 576 codes (24x24) -> VQ decoder -> 384x384 image

generate() runs the same computation as `model.generate(generation_mode="image")` (token for token under
greedy decoding, which the tests check) with two differences that an audit needs: every image draws from its
own seeded random stream (upstream samples the whole batch from the global RNG), and top-p / top-k are
applied to the guided logits. The classifier-free guidance batch is built as upstream builds it: each
prompt's unconditional row is the same token sequence with every token except BOS and <begin_of_image>
replaced by the pad token, attended to as in the conditional row.

Checkpoints must be in transformers format (model_type "janus"): deepseek-community/Janus-Pro-1B and -7B,
deepseek-community/Janus-1.3B, or DeepSeek's originals converted with transformers'
convert_janus_weights_to_hf.py. Sampling defaults are the checkpoint's generation_config.json, else
DeepSeek's published recommendation for Janus and Janus-Pro: cfg 5.0, temperature 1.0, no top-p / top-k.
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
from .engine import ImageEngine, LlamaDecoder, auto_batch, in_batches, should_stack

FAMILY = "janus"
RECOMMENDED = Sampling(cfg=5.0, temperature=1.0)
# The chat template Janus-Pro's processor ships with (DeepSeek's prompt format), used for checkpoints whose
# processor carries none (as Emu3 falls back to its own).
CHAT_TEMPLATE = (
    "{%set seps=['\n\n','<\uff5cend\u2581of\u2581sentence\uff5c>']%}{%set i=0%}{%for message in messages%}"
    "{%if message['role']|lower=='user'%}<|User|>: {%elif message['role']|lower=='assistant'%}<|Assistant|>:"
    "{%if not (loop.last and not add_generation_prompt and message['content'][0]['type']=='text' and "
    "message['content'][0]['text']=='')%} {%endif%}{%else%}{{message['role'].capitalize()}}: {%endif%}"
    "{%for content in message['content']%}{%if content['type']=='image'%}{%if not loop.first%}{{'\n'}}{%endif%}"
    "<image_placeholder>{%if not loop.last%}{{'\n'}}{%endif%}{%elif content['type']=='text'%}"
    "{%set text=content['text']%}{%if loop.first%}{%set text=text.lstrip()%}{%endif%}"
    "{%if loop.last%}{%set text=text.rstrip()%}{%endif%}"
    "{%if not loop.first and message['content'][loop.index0-1]['type']=='text'%}{{' '+text}}{%else%}{{text}}"
    "{%endif%}{%endif%}{%endfor%}{%if not loop.last or add_generation_prompt%}"
    "{%if message['role']|lower=='user'%}{{seps[0]}}{%else%}{{seps[1]}}{%endif%}{%endif%}{%endfor%}"
    "{%if add_generation_prompt%}<|Assistant|>:{%endif%}"
)


class JanusModel:
    """A Janus / Janus-Pro checkpoint behind the model protocols (the `janus` family's constructor).

    checkpoint: a local directory or a hub id. device: "cuda", "cpu", ... (default: CUDA when present).
    dtype: "bf16" | "fp16" | "fp32" (default bf16 on GPU, fp32 on CPU). device_map: accelerate placement
    (e.g. "auto") for checkpoints larger than one device; `device` is then ignored. graphs: the engine
    replays its token steps as CUDA graphs (CUDA only; docs/performance.md); default: on when the model
    sits on one CUDA device (docs/performance.md measures the gain), off otherwise.
    """

    def __init__(self, checkpoint: str, device: str | None = None, dtype: str | None = None,
                 device_map: str | dict | None = None, graphs: bool | None = None) -> None:
        loading.require_transformers(FAMILY)
        from transformers import JanusForConditionalGeneration, JanusProcessor

        if graphs and device_map is not None:  # a graph replays one device's kernels; checked before loading
            raise FairgenError(f"{FAMILY}: graphs=true needs the whole model on one CUDA device, not spread "
                               f"by device_map={device_map!r}; leave graphs unset")

        path, revision = loading.resolve_checkpoint(FAMILY, checkpoint)
        loading.check_model_type(FAMILY, path, "janus")
        target = loading.resolve_device(device)
        self.dtype = loading.resolve_dtype(dtype, target)
        self.hf, self.processor = loading.load_pretrained(FAMILY, path, JanusForConditionalGeneration, JanusProcessor,
                                                     self.dtype, target, device_map)
        self.spec = f"{FAMILY}:{checkpoint}"
        self.fingerprint = loading.Fingerprint(path, checkpoint, revision)
        # Full names of the LM decoder's linear layers (attention and MLP projections), listed before any LoRA
        # is injected. Full names, because a bare `q_proj` also matches the SigLIP vision tower's attention.
        self.lora_targets: list[str] = loading.linear_names(self.hf, "model.language_model.layers.")
        self.tokenizer = self.processor.tokenizer
        self.defaults = loading.generation_defaults(self.hf.generation_config, RECOMMENDED)
        self.boi_id = self.tokenizer.convert_tokens_to_ids(self.processor.image_start_token)
        if graphs and self.device.type != "cuda":
            raise FairgenError(f"{FAMILY}: graphs=true needs the model on a CUDA device "
                               f"(it is on {self.device})")
        self.graphs = graphs if graphs is not None else self.device.type == "cuda" and device_map is None
        self.n_image_tokens = self.hf.config.vision_config.num_image_tokens  # 576 = 24x24 for 384 px

    # -- the language model and what LoRA may touch -----------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where inputs go: the device of the LM's token embeddings (the first layer under a device_map)."""
        return self.hf.get_input_embeddings().weight.device

    @property
    def language_model(self) -> torch.nn.Module:
        """The Llama decoder shared by understanding and generation."""
        return self.hf.model.language_model

    @property
    def lora_root(self) -> torch.nn.Module:
        """The module `lora_targets` names are relative to (the whole transformers model)."""
        return self.hf

    @property
    def _chat(self) -> chat.ChatFormat:
        """The processor's chat template (and default system prompt), or Janus-Pro's where it carries none."""
        return chat.ChatFormat(template=getattr(self.processor, "chat_template", None) or CHAT_TEMPLATE)

    def provenance(self) -> dict[str, Any]:
        """Checkpoint source, hub revision, sha256 of config / tokenizer / weight files, dtype, defaults."""
        return {"family": FAMILY, **self.fingerprint.as_dict(), "dtype": str(self.dtype).removeprefix("torch."),
                "default_sampling": asdict(self.defaults)}

    # -- generation -------------------------------------------------------------------------------------
    def _generation_inputs(self, prompts: Sequence[Prompt | str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded (input_ids, attention_mask) [B, L] of "<|User|>: {prompt}\\n\\n<|Assistant|>:<begin_of_image>"
        (the chat template with an empty system prompt, as DeepSeek's generation scripts use)."""
        texts = [self.processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "text", "text": prompt_text(p)}]}], add_generation_prompt=True,
            chat_template=self._chat.template) for p in prompts]
        enc = self.processor(text=texts, generation_mode="image", padding=True, return_tensors="pt")
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    @torch.no_grad()
    def generate_tokens(self, prompts: Sequence[Prompt | str], seeds: Sequence[int], engine: bool = True,
                        graphs: bool | None = None, **sampling: Any) -> torch.Tensor:
        """Sample the VQ codes of one image per (prompt, seed): LongTensor [B, 576] (row-major 24x24 grid).

        sampling: cfg, temperature, top_p, top_k (defaults: see the module docstring). engine: fairgen's
        static-cache engine (engine.py), in batches that fit the free memory and halve on out-of-memory;
        False: transformers' forward with its dynamic cache, one batch (the reference the engine is tested
        against). graphs: replay the engine's steps as CUDA graphs (CUDA only); None: the model's option."""
        checks.check_batch(FAMILY, prompts, seeds, "seeds")
        s = self.defaults.resolve(sampling, FAMILY)
        if not engine:
            return self._reference_tokens(prompts, seeds, s)
        twins = 2 if s.cfg != 1.0 else 1
        longest = self._generation_inputs(prompts)[0].shape[1]
        batch, stack = self._engine_batch(longest + self.n_image_tokens, twins)
        graphs = self.graphs if graphs is None else graphs
        return in_batches(lambda a, b: self._engine_tokens(prompts[a:b], seeds[a:b], s, graphs, stack), len(prompts),
                          batch)

    def _engine_batch(self, length: int, twins: int) -> tuple[int, bool]:
        """(images per engine call, whether its decoder stacks its projections) for rows of `length` tokens
        and `twins` rows per image, by the memory free now (engine.auto_batch, engine.should_stack)."""
        stack = should_stack(self.language_model)
        return auto_batch(self.language_model, length, twins), stack

    def _guidance_rows(self, prompts: Sequence[Prompt | str], s: Sampling) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, mask) of the prompts, followed by their unconditional twins when cfg != 1: the same token
        sequence with every token except BOS and <begin_of_image> replaced by the pad token."""
        ids, mask = self._generation_inputs(prompts)
        if s.cfg != 1.0:
            special = (ids == self.tokenizer.bos_token_id) | (ids == self.boi_id)
            uncond = ids.masked_fill(~special, self.tokenizer.pad_token_id)
            ids, mask = torch.cat([ids, uncond]), torch.cat([mask, mask])
        return ids, mask

    def _engine_tokens(self, prompts: Sequence[Prompt | str], seeds: Sequence[int], s: Sampling,
                       graphs: bool, stack: bool) -> torch.Tensor:
        ids, mask = self._guidance_rows(prompts, s)
        decoder = LlamaDecoder(self.language_model, mask, self.n_image_tokens, stack=stack)
        uniforms = uniform_table(seeds, self.n_image_tokens, self.device)
        run = ImageEngine(decoder, self.hf.model.generation_head,
                          lambda codes: self.hf.prepare_embeddings_for_image_generation(codes.unsqueeze(1)),
                          uniforms, s)
        return run.run(self.hf.get_input_embeddings()(ids), graphs=graphs, ids=ids).clone()

    def _reference_tokens(self, prompts: Sequence[Prompt | str], seeds: Sequence[int], s: Sampling) -> torch.Tensor:
        ids, mask = self._guidance_rows(prompts, s)
        decoder = decoding.CachedDecoder(self.language_model, mask)
        uniforms = uniform_table(seeds, self.n_image_tokens, self.device)
        hidden = decoder(self.hf.get_input_embeddings()(ids))[:, -1]
        codes = []
        for t in range(self.n_image_tokens):
            logits = s.guide(self.hf.model.generation_head(hidden))
            code = sample(logits, s, uniforms[:, t])
            codes.append(code)
            if t < self.n_image_tokens - 1:
                step = code.repeat(2 if s.cfg != 1.0 else 1).unsqueeze(1)
                hidden = decoder(self.hf.prepare_embeddings_for_image_generation(step))[:, -1]
        return torch.stack(codes, dim=1)

    def generate(self, prompts: Sequence[Prompt | str], seeds: Sequence[int], **sampling: Any) -> list[Image.Image]:
        """One image per (prompt, seed) (384x384 for Janus / Janus-Pro). The same prompt, seed and settings
        give the same image; within float noise of the batch's padding, whatever else is in the batch."""
        return self.decode_tokens(self.generate_tokens(prompts, seeds, **sampling))

    # -- the vision tokenizer (generation path) ---------------------------------------------------------
    def _pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Images -> [B, 3, S, S] pixel values in [-1, 1] at the model's resolution (padded to square)."""
        pv = self.processor.image_processor([im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
        return pv.to(self.device, self.dtype)

    @torch.no_grad()
    def encode_image(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """VQ codes of images: LongTensor [B, 576], the codes the generation head predicts."""
        pv = self._pixels(images)
        return self.hf.model.vqmodel.encode(pv).image_tokens.view(pv.shape[0], -1)

    @torch.no_grad()
    def decode_tokens(self, tokens: torch.Tensor) -> list[Image.Image]:
        """VQ codes [B, 576] -> images (the VQ decoder's output, 16x the code grid)."""
        pixels = self.hf.model.vqmodel.decode(tokens.to(self.device))
        ip = self.processor.image_processor
        return to_pil(pixels, ip.image_mean, ip.image_std)

    # -- understanding ----------------------------------------------------------------------------------
    @torch.no_grad()
    def understanding_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The SigLIP understanding encoder's output for each image: float32 [B, N, D] (N = 576 patches,
        D = 1024 for Janus-Pro), before the aligner. Mean over N for a per-image probe feature."""
        out = self.hf.model.vision_model(self._pixels(images))
        return out.last_hidden_state.float().cpu()

    def answer_distribution(self, image: Image.Image | None, question: str, options: Sequence[str]) -> dict[str, float]:
        """Exact probability of each option as the whole answer (its tokens and end-of-sentence), after the
        chat prompt "<|User|>: [<image>\\n]{question}\\n\\n<|Assistant|>:" (with the checkpoint's default
        system prompt) and the image when given; renormalised over the options, the rest under OTHER."""
        return chat.answer_distribution(self, self._chat, image, question, options, FAMILY)

    def caption_logprob(self, images: Sequence[Image.Image], texts: Sequence[str], question: str) -> torch.Tensor:
        """Mean per-token log-probability [B] of texts[i] as the answer to `question` about images[i], in
        answer_distribution's format; differentiable w.r.t. the LM (and LoRA)."""
        return chat.caption_logprob(self, self._chat, images, texts, question, FAMILY)

    # -- what BPO trains on -----------------------------------------------------------------------------
    def token_logprob(self, prompts: Sequence[Prompt | str], tokens: torch.Tensor) -> torch.Tensor:
        """Mean per-token log-probability of VQ codes [B, T] given each prompt, as the generation head
        scores them (no guidance, temperature 1): float32 [B], differentiable w.r.t. the LM (and LoRA)."""
        logp = torch.log_softmax(self.image_token_logits(prompts, tokens), dim=-1)
        return logp.gather(-1, tokens.to(self.device).unsqueeze(-1)).squeeze(-1).mean(-1)

    # -- language-model internals (locate's LM audit) ---------------------------------------------------
    def image_token_logits(self, prompts: Sequence[Prompt | str], tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced generation-head logits of every image position: float32 [B, T, codebook]; row t is
        the distribution code t is sampled from (no guidance, temperature 1) given the prompt and codes
        0..t-1. tokens: VQ codes [B, T]. Differentiable w.r.t. the LM (and LoRA)."""
        checks.check_batch(FAMILY, prompts, tokens, "token rows")
        ids, mask = self._generation_inputs(prompts)
        tokens = tokens.to(self.device)
        embeds = torch.cat([self.hf.get_input_embeddings()(ids),
                            self.hf.prepare_embeddings_for_image_generation(tokens[:, :-1])], dim=1)
        mask = torch.cat([mask, mask.new_ones(tokens.shape[0], tokens.shape[1] - 1)], dim=1)
        out = self.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=decoding.positions(mask))
        # The hidden state at <begin_of_image> predicts code 0, the one at code t-1 predicts code t.
        hidden = out.last_hidden_state[:, ids.shape[1] - 1:]
        return self.hf.model.generation_head(hidden).float()

    @torch.no_grad()
    def image_start_hidden(self, prompts: Sequence[Prompt | str]) -> torch.Tensor:
        """The LM's last hidden state at <begin_of_image> (which predicts the first code): float32 [B, D]."""
        ids, mask = self._generation_inputs(prompts)
        out = self.language_model(inputs_embeds=self.hf.get_input_embeddings()(ids), attention_mask=mask,
                                  position_ids=decoding.positions(mask))
        return out.last_hidden_state[:, -1].float().cpu()

    @torch.no_grad()
    def tokenizer_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The VQ code vectors of each image on its code grid, as the VQ decoder reads them: float32
        [B, C, 24, 24] for Janus / Janus-Pro (C = the codebook's embedding size)."""
        return self.hf.model.vqmodel.quantize.get_codebook_entry(self.encode_image(images)).float().cpu()

    def image_token_logprob(self, prompts: Sequence[Prompt | str], images: Sequence[Image.Image]) -> torch.Tensor:
        """Mean per-token log-probability [B] of each image's VQ codes given its prompt (differentiable)."""
        checks.check_batch(FAMILY, prompts, images, "images")
        return self.token_logprob(prompts, self.encode_image(images))


__all__ = ["RECOMMENDED", "JanusModel"]
