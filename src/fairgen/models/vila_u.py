"""`vila-u:<hf id or dir>`: VILA-U (MIT Han lab), a native port that loads the official checkpoint layout.

One LLaMA-2 LM, one vision tower (vila_u_rq.py) for both directions:
  understanding  image -> RQ-VAE codes -> z_q (sum of the code vectors) -> mm_projector -> 256 LM inputs
                 in place of <image> -> lm_head (text)
  generation     LM hidden state -> depth transformer -> 4 residual codes of one position (guided, sampled
                 one by one) -> mm_projector(sum of their vectors) -> the next LM input; 256 positions
                 (16x16) -> RQ-VAE decoder -> 256x256 image

Token view: the codes of an image are handled as one flat sequence, position-major, depth-minor
(LongTensor [B, 256 * 4] for 7B-256), so generate_tokens, encode_image and image_token_logits keep the
[B, T] contract of the other families; code_grid() reshapes.

Checkpoint (`mit-han-lab/vila-u-7b-256`, or a local copy): config.json (model_type "vila_u_llama"), llm/
(LlamaForCausalLM and its tokenizer), mm_projector/ (config.json, mlp2x_gelu, model.safetensors),
vision_tower/ (config.json with `rqvaesiglip` and `rqtransformer`, model.safetensors). Upstream builds the
SigLIP config from the hub (`pretrained_model`); fairgen knows the two released ones (below) and otherwise
reads `<vision_tower>/<pretrained_model>/config.json`: nothing is fetched at load beyond the checkpoint.

Sampling as upstream hard-codes it (vila_u_arch.py generate_image_content, rqtransformer.generate): cfg
3.0 on the depth transformer's logits (the unconditional row: the same chat prompt with an empty user
turn), temperature 1.0, top-k 900, top-p 0.96, at every depth. What differs: every image draws from its
own seeded stream (upstream: the global RNG), and the settings can be changed. docs/models.md has the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch
from PIL import Image

from ..types import FairgenError, Prompt, prompt_text
from .engine import ImageEngine, LlamaDecoder, auto_batch, in_batches, should_stack
from .hf import checks, decoding, loading
from .hf.chat import option_distribution, pad_continuations
from .hf.images import to_pil
from .protocols import OTHER
from .sampling import Sampling, sample, uniform_table
from .vila_u_checkpoint import SYSTEM_TEXT as SYSTEM
from .vila_u_checkpoint import load_parts
from .vila_u_rq import DepthCache

FAMILY = "vila-u"
UPSTREAM = Sampling(cfg=3.0, temperature=1.0, top_p=0.96, top_k=900)


def chat_prompt(user: str) -> str:
    """The vicuna-v1 prompt up to the assistant's turn. An empty user turn has no text and no space after
    "USER:" (how upstream's conversation template renders it; the guidance row uses one)."""
    user = user.strip()
    return f"{SYSTEM} USER: {user} ASSISTANT:" if user else f"{SYSTEM} USER:ASSISTANT:"


class DepthEngine(ImageEngine):
    """ImageEngine whose token is a stack of `depth` codes: `draw(hidden [N, D_lm], u [B, depth]) -> codes
    [B, depth]` runs the depth transformer with guidance and sampling inside the step (so inside the CUDA
    graph); uniforms are [B, T, depth]."""

    def __init__(self, decoder: LlamaDecoder, draw: Any, embed: Any, uniforms: torch.Tensor, s: Sampling) -> None:
        super().__init__(decoder, None, embed, uniforms, s)
        self.draw = draw

    def _sample(self) -> torch.Tensor:
        u = self.uniforms.index_select(1, self.t.view(1)).squeeze(1)
        code = self.draw(self.hidden, u)
        self.codes.index_copy_(1, self.t.view(1), code.unsqueeze(1))
        return code


class _Root(torch.nn.ModuleDict):
    """The one module tree of a VilaUModel (llm, mm_projector, vision_tower: the checkpoint's folders),
    what LoRA is injected into. It passes transformers' checkpointing switches to the LLM, so `fairgen fix`
    recomputes the LM's decoder layers in backward as it does for the other transformers families."""

    supports_gradient_checkpointing = True

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        self["llm"].gradient_checkpointing_enable(**kwargs)

    def gradient_checkpointing_disable(self) -> None:
        self["llm"].gradient_checkpointing_disable()

    def __getattr__(self, name: str) -> Any:  # activation_checkpointing_* where transformers has them
        if name.startswith("activation_checkpointing_"):
            return getattr(self["llm"], name)
        return super().__getattr__(name)


class VilaUModel:
    """A VILA-U checkpoint (official layout) behind the unified model protocol.

    checkpoint: a local directory or a hub id. device / dtype: as for JanusModel (bf16 on GPU, fp32 on CPU).
    graphs: replay the engine's token steps as CUDA graphs (default: on when the model is on CUDA).
    lora_depth: LoRA (fairgen fix) also trains the depth transformer's blocks, not only the LM."""

    capabilities = frozenset({"generate", "understand", "image_logprob", "tokenize", "lora", "lm_hooks",
                              "tokenizer_features", "understanding_features", "caption"})

    def __init__(self, checkpoint: str, device: str | None = None, dtype: str | None = None,
                 graphs: bool | None = None, lora_depth: bool = False) -> None:
        loading.require_transformers(FAMILY)
        path, revision = loading.resolve_checkpoint(FAMILY, checkpoint)
        target = loading.resolve_device(device)
        self._setup(load_parts(path, loading.resolve_dtype(dtype, target), target), f"{FAMILY}:{checkpoint}",
                    loading.Fingerprint(path, checkpoint, revision), graphs, lora_depth)

    @classmethod
    def from_parts(cls, parts: dict[str, Any], spec: str, graphs: bool | None = None) -> VilaUModel:
        """A model from modules already built (vila_u_checkpoint.random_parts: benchmarks at full size
        without writing a checkpoint); provenance then names no files."""
        self = cls.__new__(cls)
        self._setup(parts, spec, None, graphs)
        return self

    def _setup(self, parts: dict[str, Any], spec: str, fingerprint: loading.Fingerprint | None, graphs: bool | None,
               lora_depth: bool = False) -> None:
        self.spec, self.fingerprint = spec, fingerprint
        self.llm, self.projector, self.vae, self.depth = parts["llm"], parts["projector"], parts["vae"], parts["depth"]
        self.tokenizer, self.image_size, self.aspect = parts["tokenizer"], parts["image_size"], parts["aspect"]
        self.dtype = self.llm.dtype
        self.root = _Root({"llm": self.llm, "mm_projector": self.projector,
                           "vision_tower": torch.nn.ModuleDict({"rqvaesiglip": self.vae, "rqtransformer": self.depth})})
        self.lora_targets: list[str] = loading.linear_names(self.root, "llm.model.layers.")
        if lora_depth:
            self.lora_targets += loading.linear_names(self.root, "vision_tower.rqtransformer.head_transformer.")
        self.defaults = UPSTREAM
        self.im_start = self.tokenizer.convert_tokens_to_ids("<im_start>")
        if self.im_start is None or self.im_start == self.tokenizer.unk_token_id:
            raise FairgenError(f"{FAMILY}: the tokenizer has no <im_start> token (not a VILA-U tokenizer)")
        self.depth_codes = self.vae.quantizer.depth
        self.positions = (self.image_size // self.vae.embeddings.patch_size) ** 2  # 256 = 16x16 for 7B-256
        self.n_image_tokens = self.positions * self.depth_codes  # the flat token view (module docstring)
        if graphs and self.device.type != "cuda":
            raise FairgenError(f"{FAMILY}: graphs=true needs the model on a CUDA device (it is on {self.device})")
        self.graphs = graphs if graphs is not None else self.device.type == "cuda"

    @property
    def device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    @property
    def language_model(self) -> torch.nn.Module:
        """The LLaMA decoder (without lm_head) that both directions run."""
        return self.llm.model

    @property
    def lora_root(self) -> torch.nn.Module:
        """The module `lora_targets` names are relative to."""
        return self.root

    def provenance(self) -> dict[str, Any]:
        files = self.fingerprint.as_dict() if self.fingerprint else {"source": self.spec, "sha256": {}}
        return {"family": FAMILY, **files, "dtype": str(self.dtype).removeprefix("torch."),
                "default_sampling": asdict(self.defaults)}

    # -- prompts ----------------------------------------------------------------------------------------
    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _rows(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded (ids, mask) [N, L] of <s> + each text (padding: id 0, mask 0, as upstream pads)."""
        rows = [[self.tokenizer.bos_token_id] + self._ids(t) for t in texts]
        longest = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), longest, dtype=torch.long)
        mask = torch.zeros(len(rows), longest, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, longest - len(r):], mask[i, longest - len(r):] = torch.tensor(r), 1
        return ids.to(self.device), mask.to(self.device)

    def _generation_rows(self, prompts: Sequence[Prompt | str], cfg: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompts' rows ending in <im_start>, then (cfg != 1) as many unconditional rows (empty user turn)."""
        texts = [chat_prompt(prompt_text(p)) + " <im_start>" for p in prompts]
        if cfg != 1.0:
            texts += [chat_prompt("") + " <im_start>"] * len(prompts)
        return self._rows(texts)

    # -- generation -------------------------------------------------------------------------------------
    def _draw(self, hidden: torch.Tensor, u: torch.Tensor, s: Sampling,
              cache: DepthCache | None = None) -> torch.Tensor:
        """The codes of one position for every image: the depth transformer, guided and sampled one depth
        at a time (each depth sees the running sum of the codes drawn before it). hidden [N, D_lm] (N = B or
        2B with the guidance twins, which share the conditional row's codes); u [B, depth] -> [B, depth].
        cache: the depth transformer's KV cache for N rows (DepthTransformer.new_cache), so each depth runs
        one token through its blocks (the engine); None: every depth recomputes all depths before it, as
        upstream does (the reference loop)."""
        twins = hidden.shape[0] // u.shape[0]
        x = self.depth.in_mlp_2(hidden).unsqueeze(1)  # depth 0's input [N, 1, dim]
        inputs, total, codes = x, None, []
        for d in range(self.depth_codes):
            logits = self.depth.step_logits(inputs) if cache is None else self.depth.cached_logits(x, cache, d)
            code = sample(s.guide(logits), s, u[:, d])
            codes.append(code)
            if d + 1 < self.depth_codes:
                vec = self.vae.quantizer.book(d)[code.repeat(twins)]
                total = vec if total is None else total + vec
                x = self.depth.in_mlp_1(total).unsqueeze(1)  # depth d + 1's input
                if cache is None:
                    inputs = torch.cat([inputs, x], 1)
        return torch.stack(codes, -1)

    def _embed(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [N, depth] -> the next LM inputs [N, 1, D_lm]: mm_projector(sum of the code vectors)."""
        return self.projector(self.vae.features(codes)).unsqueeze(1)

    @torch.no_grad()
    def generate_tokens(self, prompts: Sequence[Prompt | str], seeds: Sequence[int], engine: bool = True,
                        graphs: bool | None = None, **sampling: Any) -> torch.Tensor:
        """Codes of one image per (prompt, seed): LongTensor [B, positions * depth] (flat view).

        engine: the static-cache engine (engine.py; batches fit to free memory); False: a loop over
        transformers' forward with its dynamic cache, as upstream runs (the reference)."""
        checks.check_batch(FAMILY, prompts, seeds, "seeds")
        s = self.defaults.resolve(sampling, FAMILY)
        twins = 2 if s.cfg != 1.0 else 1
        if not engine:
            return self._reference_tokens(prompts, seeds, s).flatten(1)
        longest = self._generation_rows(prompts, s.cfg)[0].shape[1]
        batch, stack = self._engine_batch(longest + self.positions, twins)
        graphs = self.graphs if graphs is None else graphs
        run = lambda a, b: self._engine_tokens(prompts[a:b], seeds[a:b], s, graphs, stack)  # noqa: E731
        return in_batches(run, len(prompts), batch).flatten(1)

    def _engine_batch(self, length: int, twins: int) -> tuple[int, bool]:
        """(images per engine call, whether its decoder stacks its projections) for rows of `length` tokens
        and `twins` rows per image, by the memory free now (engine.auto_batch, engine.should_stack); a larger
        batch runs as several engine calls."""
        stack = should_stack(self.language_model)
        return auto_batch(self.language_model, length, twins), stack

    def _uniforms(self, seeds: Sequence[int]) -> torch.Tensor:
        """Each image's own uniform numbers [B, positions, depth] (sampling.uniform_table, flat token t =
        position * depth + d)."""
        u = uniform_table(seeds, self.n_image_tokens, self.device)
        return u.view(len(seeds), self.positions, self.depth_codes)

    def _engine_tokens(self, prompts: Sequence[Prompt | str], seeds: Sequence[int], s: Sampling, graphs: bool,
                       stack: bool) -> torch.Tensor:
        ids, mask = self._generation_rows(prompts, s.cfg)
        decoder = LlamaDecoder(self.language_model, mask, self.positions, stack=stack)
        cache = self.depth.new_cache(ids.shape[0])  # the depth transformer's, reused by every position
        run = DepthEngine(decoder, lambda h, u: self._draw(h, u, s, cache), self._embed, self._uniforms(seeds), s)
        return run.run(self.llm.get_input_embeddings()(ids), graphs=graphs, ids=ids).clone()

    def _reference_tokens(self, prompts: Sequence[Prompt | str], seeds: Sequence[int], s: Sampling) -> torch.Tensor:
        ids, mask = self._generation_rows(prompts, s.cfg)
        decoder = decoding.CachedDecoder(self.language_model, mask)
        u = self._uniforms(seeds)
        hidden = decoder(self.llm.get_input_embeddings()(ids))[:, -1]
        codes = []
        for t in range(self.positions):
            code = self._draw(hidden, u[:, t], s)
            codes.append(code)
            if t < self.positions - 1:
                hidden = decoder(self._embed(code.repeat(2 if s.cfg != 1.0 else 1, 1)))[:, -1]
        return torch.stack(codes, 1)

    def generate(self, prompts: Sequence[Prompt | str], seeds: Sequence[int], **sampling: Any) -> list[Image.Image]:
        """One image per (prompt, seed), image_size x image_size (256 for 7B-256)."""
        return self.decode_tokens(self.generate_tokens(prompts, seeds, **sampling))

    # -- the vision tokenizer ---------------------------------------------------------------------------
    def code_grid(self, tokens: torch.Tensor) -> torch.Tensor:
        """Flat codes [B, positions * depth] -> [B, g, g, depth]."""
        g = int(self.positions ** 0.5)
        return tokens.reshape(tokens.shape[0], g, g, self.depth_codes)

    def _pixels(self, images: Sequence[Image.Image], crop: bool) -> torch.Tensor:
        """Images -> [B, 3, S, S] in [-1, 1]. crop: a centred square crop (the top square of a portrait
        image), as upstream prepares images to encode for generation; else the checkpoint's
        image_aspect_ratio: "resize" (stretch) or "pad" (to a square of grey 127)."""
        out = []
        for im in images:
            im = im.convert("RGB")
            w, h = im.size
            if crop and w != h:
                side = min(w, h)
                im = im.crop((0, 0, side, side) if w < h else ((w - side) // 2, 0, (w - side) // 2 + side, side))
            elif self.aspect == "pad" and w != h:
                square = Image.new("RGB", (max(w, h),) * 2, (127, 127, 127))
                square.paste(im, ((max(w, h) - w) // 2, (max(w, h) - h) // 2))
                im = square
            if im.size != (self.image_size, self.image_size):
                im = im.resize((self.image_size, self.image_size), Image.BICUBIC)
            out.append(torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(self.image_size, self.image_size, 3))
        x = torch.stack(out).permute(0, 3, 1, 2).to(self.device, torch.float32) / 255.0
        return ((x - 0.5) / 0.5).to(self.dtype)

    @torch.no_grad()
    def encode_image(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """RQ codes of images, flat: LongTensor [B, positions * depth] (what generation samples)."""
        return self.vae.encode(self._pixels(images, crop=True)).flatten(1)

    @torch.no_grad()
    def decode_tokens(self, tokens: torch.Tensor) -> list[Image.Image]:
        """Codes [B, positions * depth] (or [B, g, g, depth]) -> images."""
        pixels = self.vae.decode(self.code_grid(tokens.to(self.device)))
        return to_pil(pixels, [0.5] * 3, [0.5] * 3)

    @torch.no_grad()
    def tokenizer_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The quantised features z_q of each image on its code grid: float32 [B, C, g, g]."""
        z = self.vae.features(self.code_grid(self.encode_image(images)))
        return z.permute(0, 3, 1, 2).float().cpu()

    @torch.no_grad()
    def understanding_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """What understanding feeds the projector: the same quantised features (VILA-U's tower is one for
        both directions), of the images prepared as understanding prepares them: float32 [B, positions, C]."""
        z = self.vae.features(self.vae.encode(self._pixels(images, crop=False)))
        return z.flatten(1, 2).float().cpu()

    # -- understanding ----------------------------------------------------------------------------------
    def _context(self, image: Image.Image | None, question: str) -> tuple[torch.Tensor, str]:
        """(input embeddings [1, L, D_lm] of the chat prompt with the image's 256 projected features in place
        of <image>, the text after the image). Each text chunk is tokenised on its own, as upstream does."""
        embed = self.llm.get_input_embeddings()
        question = question.strip()
        if image is None:
            text = chat_prompt(question)
            return embed(self._rows([text])[0]), text
        before, after = f"{SYSTEM} USER: ", f"\n{question} ASSISTANT:"
        feats = self.projector(self.vae.features(self.vae.encode(self._pixels([image], crop=False))).flatten(1, 2))
        ids_after = torch.tensor([self._ids(after)], device=self.device)
        return torch.cat([embed(self._rows([before])[0]), feats, embed(ids_after)], 1), after

    def _continuation(self, prefix: str, option: str) -> list[int]:
        """The tokens the assistant's answer `option` adds after `prefix` ("... ASSISTANT: male</s>"),
        and the end of sentence."""
        head, full = self._ids(prefix), self._ids(f"{prefix} {option}")
        if full[:len(head)] != head:
            raise FairgenError(f"{FAMILY}: the tokenizer splits the prompt differently once {option!r} follows it; "
                               "cannot score that option")
        return full[len(head):] + [self.tokenizer.eos_token_id]

    def _answer_logprobs(self, image: Image.Image | None, question: str, answers: Sequence[str]
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-probability float64 [K] of each answer's tokens and </s> after the prompt, token counts [K]),
        in one forward over K right-padded rows; differentiable w.r.t. the LM."""
        context, tail = self._context(image, question)
        conts = [self._continuation(tail, a) for a in answers]
        like = torch.zeros(1, dtype=torch.long, device=self.device)
        cont, valid = pad_continuations(conts, self.tokenizer.eos_token_id, like)
        k, n = cont.shape
        embeds = torch.cat([context.expand(k, -1, -1), self.llm.get_input_embeddings()(cont)], 1)
        mask = torch.cat([torch.ones(k, context.shape[1], dtype=torch.long, device=self.device), valid.long()], 1)
        logits = self.llm(inputs_embeds=embeds, attention_mask=mask, logits_to_keep=n + 1).logits[:, :n]
        logp = torch.log_softmax(logits.double(), -1).gather(-1, cont.unsqueeze(-1)).squeeze(-1)
        return (logp * valid).sum(-1), valid.sum(-1)

    @torch.no_grad()
    def option_logprobs(self, image: Image.Image | None, question: str, options: Sequence[str]) -> torch.Tensor:
        """Log-probability (float64 [K]) of each option as the whole answer; answer_distribution's input."""
        checks.check_options(FAMILY, options)
        return self._answer_logprobs(image, question, options)[0]

    def answer_distribution(self, image: Image.Image | None, question: str, options: Sequence[str]) -> dict[str, float]:
        """Exact probability of each option as the whole answer (its tokens and </s>) after the vicuna
        prompt (and the image when given), renormalised over the options; the rest under OTHER."""
        return option_distribution(options, self.option_logprobs(image, question, options), OTHER)

    def caption_logprob(self, images: Sequence[Image.Image], texts: Sequence[str], question: str) -> torch.Tensor:
        """Mean log-probability per token (float32 [B]) of texts[i] (and </s>) as the answer to `question`
        about images[i], as answer_distribution scores answers; differentiable w.r.t. the LM."""
        checks.check_batch(FAMILY, images, texts, "texts")
        rows = [self._answer_logprobs(im, question, [t]) for im, t in zip(images, texts)]
        return torch.stack([(lp / n)[0] for lp, n in rows]).float()

    # -- what locate's LM audit and BPO use -------------------------------------------------------------
    def image_token_logits(self, prompts: Sequence[Prompt | str], tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits of every code: float32 [B, positions * depth, n_codes] (flat view); row
        (t, d) is the distribution code d of position t is drawn from (no guidance, temperature 1) given
        the prompt, positions < t and depths < d. The LM runs on <s> prompt <im_start> and the projected
        code sums of positions 0..T-2; its hidden states at <im_start> and those positions feed the depth
        transformer. Differentiable w.r.t. the LM (LoRA) and the depth transformer."""
        checks.check_batch(FAMILY, prompts, tokens, "token rows")
        codes = self.code_grid(tokens.to(self.device)).flatten(1, 2)  # [B, T, depth]
        ids, mask = self._generation_rows(prompts, 1.0)
        vecs = self.vae.quantizer.embed(codes)  # [B, T, depth, C]
        embeds = torch.cat([self.llm.get_input_embeddings()(ids), self.projector(vecs[:, :-1].sum(-2))], 1)
        mask = torch.cat([mask, mask.new_ones(codes.shape[0], codes.shape[1] - 1)], 1)
        hidden = self.language_model(inputs_embeds=embeds, attention_mask=mask,
                                     position_ids=decoding.positions(mask)).last_hidden_state[:, ids.shape[1] - 1:]
        return self.depth(hidden, vecs).float().flatten(1, 2)

    def token_logprob(self, prompts: Sequence[Prompt | str], tokens: torch.Tensor) -> torch.Tensor:
        """Mean log-probability per code (positions x depths) of flat codes [B, T*depth] given each prompt:
        float32 [B], differentiable. (The sum over codes, the image's log-probability, is T*depth times it.)"""
        logp = torch.log_softmax(self.image_token_logits(prompts, tokens), -1)
        return logp.gather(-1, tokens.to(self.device).unsqueeze(-1)).squeeze(-1).mean(-1)

    def image_token_logprob(self, prompts: Sequence[Prompt | str], images: Sequence[Image.Image]) -> torch.Tensor:
        """Mean per-code log-probability [B] of each image's RQ codes given its prompt (differentiable)."""
        checks.check_batch(FAMILY, prompts, images, "images")
        return self.token_logprob(prompts, self.encode_image(images))

    @torch.no_grad()
    def image_start_hidden(self, prompts: Sequence[Prompt | str]) -> torch.Tensor:
        """The LM's last hidden state at <im_start> (what the first position's codes come from): float32 [B, D]."""
        ids, mask = self._generation_rows(prompts, 1.0)
        out = self.language_model(inputs_embeds=self.llm.get_input_embeddings()(ids), attention_mask=mask,
                                  position_ids=decoding.positions(mask))
        return out.last_hidden_state[:, -1].float().cpu()


__all__ = ["UPSTREAM", "DepthEngine", "VilaUModel", "chat_prompt"]
