"""`show-o:<hf id or dir>`: Show-o (showlab), a unified model that draws by discrete diffusion: every image
token starts as a mask token and a fixed number of parallel steps unmask them, MaskGIT-style.

Checkpoints, as released (showlab/show-o, show-o-512x512, show-o-w-clip-vit, show-o-w-clip-vit-512x512):
a diffusers-style config.json (`_class_name: Showo`, w_clip_vit, vocab_size 58498, llm_vocab_size 50295,
llm_model_path, codebook_size 8192, num_vq_tokens 256 or 1024) and fp32 safetensors whose keys are a
transformers PhiForCausalLM's under `showo.` (plus `mm_projector.` for the CLIP variants). The LM's
architecture and text tokenizer are those of `llm_model_path` (microsoft/phi-1_5: a local directory or a
hub id, config and tokenizer only; option llm=). Vocabulary:
text 0..50294, [PAD] 50295, nine task / boundary tokens, image code c at 50305 + c, the mask token last
(58497). The image tokenizer is MAGVIT-v2 (magvit2.py; option vq=, default showlab/magvitv2).

Generation follows upstream's `Showo.t2i_generate` step for step (show_o_sampling.py); understanding
scores options with the discrete variants' <|mmu|> layout or, for the CLIP variants, CLIP-L/14-336 patch
features through the checkpoint's projector (option clip=). Image likelihood has no closed form here:
image_token_logprob is the masked-token surrogate of show_o_sampling.masked_logprob (docs/models.md).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..types import FairgenError, Prompt, prompt_text
from . import magvit2
from . import show_o_sampling as sampling
from .hf import chat, checks, loading
from .hf.images import to_pil
from .protocols import OTHER
from .show_o_lm import MAX_TEXT, SPECIALS, PhiRunner, additive, mmu_allowed, t2i_text

FAMILY = "show-o"
N_NEW_TOKENS = 1 + len(SPECIALS)  # [PAD] and the task / boundary tokens, between text and image codes
SYSTEM_PROMPT = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")


def _find(what: str, option: str, candidates: Sequence[Path], hub_id: str | None, patterns: list[str]) -> Path:
    """The first existing directory among `candidates`, else `hub_id` from the hub cache (or fetched: only
    files matching `patterns`); else FairgenError naming the model option that points at it."""
    for cand in candidates:
        if cand.is_dir():
            return cand
    if hub_id and hub_id.count("/") == 1 and not hub_id.startswith((".", "/", "~")):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(hub_id, allow_patterns=patterns))
        except Exception as e:  # noqa: BLE001  (offline, unknown or gated repo: one answer for the user)
            reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise FairgenError(f"{FAMILY}: cannot fetch the {what} {hub_id} ({reason}); give a local directory "
                               f"with --model-option {option}=DIR") from None
    raise FairgenError(f"{FAMILY}: cannot find the {what} (looked in {', '.join(map(str, candidates))}); give "
                       f"a directory with --model-option {option}=DIR")


class ShowoModel:
    """A Show-o checkpoint behind the unified model protocol.

    checkpoint: a directory or hub id. vq: the MAGVIT-v2 directory or hub id (default: a `magvitv2`
    directory in or beside the checkpoint's, else showlab/magvitv2). llm: where Phi-1.5's config and
    tokenizer are (default: the checkpoint's llm_model_path, or a directory of its name beside the
    checkpoint's; a hub id fetches config and tokenizer files only). clip: the
    CLIP vision tower of the -w-clip-vit variants (default openai/clip-vit-large-patch14-336, loaded on first
    use). dtype: bf16 on GPU, fp32 on CPU by default.
    """

    def __init__(self, checkpoint: str, device: str | None = None, dtype: str | None = None,
                 vq: str | None = None, llm: str | None = None,
                 clip: str = "openai/clip-vit-large-patch14-336") -> None:
        from safetensors.torch import load_file

        path, revision = loading.resolve_checkpoint(FAMILY, checkpoint)
        cfg = json.loads((path / "config.json").read_text())
        if cfg.get("_class_name") != "Showo":
            raise FairgenError(f"{FAMILY}: {path}/config.json is not a Show-o config (_class_name "
                               f"{cfg.get('_class_name')!r})")
        target = loading.resolve_device(device)
        self.dtype = loading.resolve_dtype(dtype, target)
        state: dict[str, torch.Tensor] = {}
        for f in sorted(path.glob("*.safetensors")):
            state.update(load_file(f))
        # Beside the checkpoint first: the layout `huggingface-cli download ... --local-dir` leaves.
        llm_arg = llm or cfg["llm_model_path"]
        llm_dir = _find("Phi-1.5 config and tokenizer", "llm", [Path(llm_arg).expanduser(), path.parent /
                        Path(llm_arg).name], llm_arg, ["*.json", "*.txt", "*.model"])
        tokenizer = _tokenizer(llm_dir)
        vq_dir = _find("MAGVIT-v2 image tokenizer", "vq", [Path(vq).expanduser()] if vq else
                       [path / "magvitv2", path.parent / "magvitv2"], vq or "showlab/magvitv2", ["*.json", "*.safetensors"])
        self._build(cfg, _lm_from_state(_phi_config(llm_dir), int(cfg["vocab_size"]), state), state, tokenizer,
                    magvit2.load(vq_dir, target, self.dtype), target)
        self.spec = f"{FAMILY}:{checkpoint}"
        self.fingerprint = loading.Fingerprint(path, checkpoint, revision)
        self.clip_source, self._clip = clip, None

    def _build(self, cfg: dict, lm: torch.nn.Module, state: dict[str, torch.Tensor], tokenizer: Any,
               vq: magvit2.MagvitV2, device: torch.device) -> None:
        """Assemble from parts: the Show-o config, the PhiForCausalLM, the checkpoint's other tensors (the
        CLIP projector), the extended tokenizer and the image tokenizer (benchmarks pass random ones)."""
        self.config, self.tokenizer, self.vq = cfg, tokenizer, vq
        self.w_clip_vit = bool(cfg.get("w_clip_vit", False))
        self.n_tokens = int(cfg["num_vq_tokens"])
        self.codebook = int(cfg["codebook_size"])
        self.vocab = int(cfg["vocab_size"])
        self.offset = int(cfg["llm_vocab_size"]) + N_NEW_TOKENS  # id of image code 0
        self.mask_id = int(cfg.get("mask_token_id", self.vocab - 1))
        if len(tokenizer) != self.offset or self.offset + self.codebook != self.mask_id:
            raise FairgenError(f"{FAMILY}: vocabulary layout does not add up: tokenizer {len(tokenizer)} + "
                               f"{self.codebook} codes vs image offset {self.offset}, mask {self.mask_id}")
        if vq.codebook_size != self.codebook:
            raise FairgenError(f"{FAMILY}: the image tokenizer has {vq.codebook_size} codes, the LM {self.codebook}")
        self.lm = lm.to(device, self.dtype).eval()
        self.projector = None
        if self.w_clip_vit:
            if not {"mm_projector.0.weight", "mm_projector.2.weight"} <= set(state):
                raise FairgenError(f"{FAMILY}: the config says w_clip_vit but the weights hold no mm_projector")
            dims = state["mm_projector.0.weight"].shape, state["mm_projector.2.weight"].shape
            self.projector = torch.nn.Sequential(torch.nn.Linear(dims[0][1], dims[0][0]), torch.nn.GELU(),
                                                 torch.nn.Linear(dims[1][1], dims[1][0]))
            self.projector.load_state_dict({k.removeprefix("mm_projector."): v for k, v in state.items()
                                            if k.startswith("mm_projector.")})
            self.projector.to(device, self.dtype).eval()
        self.runner = PhiRunner(self.lm)
        self.ids = {"pad": tokenizer.pad_token_id, "bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id,
                    **{t: tokenizer.convert_tokens_to_ids(t) for t in SPECIALS}}
        self.defaults = sampling.defaults_for(self.n_tokens)
        self.lora_targets: list[str] = loading.linear_names(self.lm, "model.layers.")
        self.resolution = vq.factor * round(self.n_tokens ** 0.5)

    lm_audit_note = ("show-o decodes in parallel, not left to right: its language-model audit compares, per "
                     "code position, the distribution predicted with that position's checkerboard half of the "
                     "grid masked and the other half given (not a next-token distribution), and its probes read "
                     "the hidden state at <|soi|> with every code masked (the sampler's first step)")

    @property
    def device(self) -> torch.device:
        return self.lm.model.embed_tokens.weight.device

    @property
    def lora_root(self) -> torch.nn.Module:
        """The module lora_targets are relative to: the Phi LM."""
        return self.lm

    def provenance(self) -> dict[str, Any]:
        return {"family": FAMILY, **self.fingerprint.as_dict(), "dtype": str(self.dtype).removeprefix("torch."),
                "default_sampling": self.defaults.as_dict(), "vq": self.vq.settings}

    # -- text to image ----------------------------------------------------------------------------------
    def t2i_text_ids(self, prompts: Sequence[Prompt | str | None]) -> torch.Tensor:
        """[R, 129] text parts of t2i rows (None or "" -> the unconditional, empty prompt)."""
        rows = [t2i_text(self.tokenizer(prompt_text(p) if p is not None else "")["input_ids"], self.ids)
                for p in prompts]
        return torch.tensor(rows, device=self.device)

    def guidance_text(self, prompts: Sequence[Prompt | str], cfg: float) -> torch.Tensor:
        """Text parts of the prompts, followed by as many empty-prompt rows when guidance is on (cfg != 1)."""
        return self.t2i_text_ids([*prompts, *([""] * len(prompts) if cfg != 1.0 else [])])

    def span_ids(self, codes: torch.Tensor) -> torch.Tensor:
        """[R, N] codes (mask_id where masked) -> [R, N + 2] image-span ids <|soi|> ... <|eoi|>."""
        ids = torch.where(codes == self.mask_id, codes, codes + self.offset)
        soi = ids.new_full((ids.shape[0], 1), self.ids["<|soi|>"])
        return torch.cat([soi, ids, soi.new_full(soi.shape, self.ids["<|eoi|>"])], dim=1)

    def code_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM head restricted to the image codes (mask token excluded, as upstream slices): [.., codebook]."""
        head = self.lm.lm_head
        rows = slice(self.offset, self.offset + self.codebook)
        return torch.nn.functional.linear(hidden, head.weight[rows], head.bias[rows] if head.bias is not None else None)

    def full_logits(self, text: torch.Tensor, codes: torch.Tensor, whole_head: bool = False) -> torch.Tensor:
        """Upstream's forward: whole rows (text + image span) through the LM -> code logits [R, N, codebook]
        of the image positions (fp32). Differentiable; no cache. whole_head: the full-vocabulary head, then
        the code columns (upstream's order of work; the reference loop)."""
        from .show_o_lm import t2i_allowed

        ids = torch.cat([text, self.span_ids(codes)], dim=1)
        mask = additive(t2i_allowed(text, self.ids["pad"], codes.shape[1] + 2), self.dtype)
        hidden, _ = self.runner.run(self.lm.model.embed_tokens(ids), mask)
        hidden = hidden[:, text.shape[1] + 1:-1]
        if whole_head:
            return self.lm.lm_head(hidden)[..., self.offset:self.offset + self.codebook].float()
        return self.code_head(hidden).float()

    @torch.no_grad()
    def generate_tokens(self, prompts: Sequence[Prompt | str], seeds: Sequence[int], cache: bool = True,
                        **given: Any) -> torch.Tensor:
        """Codes LongTensor [B, N] of one image per (prompt, seed); settings cfg, temperature, steps
        (show_o_sampling.resolve).
        cache=False: upstream's loop, every row whole through the LM at every step (the reference)."""
        checks.check_batch(FAMILY, prompts, seeds, "seeds")
        s = sampling.resolve(self.defaults, given, FAMILY)
        return self.sample_codes(prompts, s, sampling.Noise.from_seeds(seeds, s.steps, self.n_tokens, self.device),
                                 cache)

    @torch.no_grad()
    def sample_codes(self, prompts: Sequence[Prompt | str], s: sampling.Settings, noise: sampling.Noise,
                     cache: bool = True) -> torch.Tensor:
        """The sampler on given uniforms (generate_tokens draws them from the seeds): codes [B, N]."""
        text = self.guidance_text(prompts, s.cfg)
        if cache:
            logits_fn = sampling.prefix_logits(self, text)
        else:
            def logits_fn(codes: torch.Tensor) -> torch.Tensor:
                return self.full_logits(text, codes.repeat(text.shape[0] // codes.shape[0], 1), whole_head=True)
        return sampling.unmask(logits_fn, len(prompts), self.n_tokens, self.mask_id, s, noise)

    def generate(self, prompts: Sequence[Prompt | str], seeds: Sequence[int], **given: Any) -> list[Image.Image]:
        """One image per (prompt, seed), resolution x resolution px; the same prompt, seed and settings give
        the same image whatever else is in the batch."""
        return self.decode_tokens(self.generate_tokens(prompts, seeds, **given))

    # -- the vision tokenizer ---------------------------------------------------------------------------
    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Images -> [B, 3, S, S] in [-1, 1]: bicubic resize of the short side to S, centre crop (upstream)."""
        import numpy as np

        out = []
        for im in images:
            im = im.convert("RGB")
            scale = self.resolution / min(im.size)
            w, h = max(self.resolution, round(im.width * scale)), max(self.resolution, round(im.height * scale))
            im = im.resize((w, h), Image.BICUBIC)
            left, top = (w - self.resolution) // 2, (h - self.resolution) // 2
            im = im.crop((left, top, left + self.resolution, top + self.resolution))
            out.append(torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1))
        return torch.stack(out).to(self.device, self.dtype)

    @torch.no_grad()
    def encode_image(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """MAGVIT-v2 codes LongTensor [B, N] of images (row-major code grid)."""
        return self.vq.encode(self.pixels(images))

    @torch.no_grad()
    def decode_tokens(self, tokens: torch.Tensor) -> list[Image.Image]:
        """Codes [B, N] -> images (pixels (x + 1) / 2, rounded to 8 bits)."""
        return to_pil(self.vq.decode(tokens.to(self.device)), [0.5] * 3, [0.5] * 3)

    @torch.no_grad()
    def tokenizer_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """LFQ latents of each image on its code grid, as the MAGVIT-v2 decoder reads them: float32
        [B, C, h, w] of +-1 (C = 13 sign bits for the released tokenizer)."""
        codes = self.encode_image(images)
        return self.vq.quantize.latents(codes, round(codes.shape[1] ** 0.5)).float().cpu()

    @torch.no_grad()
    def understanding_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """What the LM reads of an image when it answers: the discrete variants' code embeddings (the LM's
        input embeddings of the MAGVIT-v2 codes), the CLIP variants' projected CLIP patch features.
        float32 [B, N, D]."""
        if self.w_clip_vit:
            return torch.cat([self._clip_features(im) for im in images]).float().cpu()
        return self.lm.model.embed_tokens(self.encode_image(images) + self.offset).float().cpu()

    # -- understanding ----------------------------------------------------------------------------------
    def _mmu_context(self, image: Image.Image | None, question: str) -> tuple[torch.Tensor, slice]:
        """Embeddings [1, L, D] of the understanding prompt and the positions every row may attend to."""
        tok, embed = self.tokenizer, self.lm.model.embed_tokens
        if self.w_clip_vit:
            system = tok(SYSTEM_PROMPT)["input_ids"]
            head = torch.tensor([[self.ids["<|mmu|>"], *system, self.ids["<|soi|>"]]], device=self.device)
            tail = [self.ids["<|eoi|>"], *tok(f"USER: {question} ASSISTANT:")["input_ids"]]
            feats = self._clip_features(image) if image is not None else embed(head)[:, :0]
            parts = [embed(head), feats, embed(torch.tensor([tail], device=self.device))]
            return torch.cat(parts, dim=1), slice(head.shape[1], head.shape[1] + feats.shape[1])
        codes = (self.encode_image([image]) + self.offset).tolist()[0] if image is not None else []
        ids = [self.ids["<|mmu|>"], self.ids["<|soi|>"], *codes, self.ids["<|eoi|>"], self.ids["bos"],
               *tok("USER: \n" + question + " ASSISTANT:")["input_ids"]]
        return embed(torch.tensor([ids], device=self.device)), slice(0, len(codes) + 3)

    def _clip_features(self, image: Image.Image) -> torch.Tensor:
        """CLIP-L/14-336 penultimate-layer patch features of one image through the projector: [1, 576, D]."""
        if self._clip is None:
            from transformers import CLIPImageProcessor, CLIPVisionModel

            here = self.fingerprint.path
            clip_dir = _find("CLIP vision tower", "clip", [Path(self.clip_source).expanduser(), here.parent /
                             Path(self.clip_source).name], self.clip_source,
                             ["*.json", "*.safetensors", "*.txt"])
            self._clip = (CLIPImageProcessor.from_pretrained(clip_dir),
                          CLIPVisionModel.from_pretrained(clip_dir, use_safetensors=True).to(self.device, self.dtype).eval())
        processor, tower = self._clip
        pv = processor(images=[image.convert("RGB")], return_tensors="pt")["pixel_values"].to(self.device, self.dtype)
        feats = tower(pv, output_hidden_states=True).hidden_states[-2][:, 1:]
        return self.projector(feats)

    def _answer_logprobs(self, context: torch.Tensor, seen: slice, answers: Sequence[str],
                         dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token log-probabilities [K, T] (in `dtype`) of each answer (" answer" then <eos>, the phi1.5
        chat template's answer) after the understanding contexts [K or 1, L, D] with the attention `seen`,
        by shifted next-token log-probabilities in one batch; and the valid-token mask [K, T]."""
        conts = [self.tokenizer(" " + a)["input_ids"] + [self.ids["eos"]] for a in answers]
        cont, valid = chat.pad_continuations(conts, self.ids["eos"], torch.zeros(1, dtype=torch.long, device=self.device))
        k, n = len(answers), context.shape[1]
        embeds = torch.cat([context.expand(k, -1, -1), self.lm.model.embed_tokens(cont)], dim=1)
        mask = additive(mmu_allowed(embeds.shape[1], seen, self.device), self.dtype).unsqueeze(0)
        hidden, _ = self.runner.run(embeds, mask.expand(k, -1, -1, -1))
        logits = self.lm.lm_head(hidden[:, n - 1:-1]).to(dtype)
        return torch.log_softmax(logits, dim=-1).gather(-1, cont.unsqueeze(-1)).squeeze(-1) * valid, valid

    @torch.no_grad()
    def option_logprobs(self, image: Image.Image | None, question: str, options: Sequence[str]) -> torch.Tensor:
        """Log-probability (float64 [K]) of each option as the whole answer after the understanding prompt."""
        context, seen = self._mmu_context(image, question)
        return self._answer_logprobs(context, seen, options, torch.float64)[0].sum(-1)

    def caption_logprob(self, images: Sequence[Image.Image], texts: Sequence[str], question: str) -> torch.Tensor:
        """Mean per-token log-probability (float32 [B]) of texts[i] (and <eos>) as the answer to `question`
        about images[i], in answer_distribution's format; differentiable (LoRA)."""
        checks.check_batch(FAMILY, images, texts, "texts")
        out = []
        for image, text in zip(images, texts):
            context, seen = self._mmu_context(image, question)
            logp, valid = self._answer_logprobs(context, seen, [text], torch.float32)
            out.append(logp.sum() / valid.sum())
        return torch.stack(out)

    def answer_distribution(self, image: Image.Image | None, question: str, options: Sequence[str]) -> dict[str, float]:
        """Exact probability of each option as the whole answer, renormalised over the options; the mass
        outside them under OTHER."""
        checks.check_options(FAMILY, options)
        return chat.option_distribution(options, self.option_logprobs(image, question, options), OTHER)

    # -- what fix trains on, and locate's LM hooks ------------------------------------------------------
    def token_logprob(self, prompts: Sequence[Prompt | str], tokens: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """The masked-token surrogate of log p(codes | prompt): float32 [B], differentiable (LoRA)."""
        checks.check_batch(FAMILY, prompts, tokens, "token rows")
        text = self.t2i_text_ids(prompts)
        return sampling.masked_logprob(lambda codes: self.full_logits(text, codes), tokens.to(self.device),
                                       self.mask_id, seed)

    def image_token_logprob(self, prompts: Sequence[Prompt | str], images: Sequence[Image.Image]) -> torch.Tensor:
        """token_logprob of each image's MAGVIT-v2 codes given its prompt [B] (differentiable)."""
        checks.check_batch(FAMILY, prompts, images, "images")
        return self.token_logprob(prompts, self.encode_image(images))

    def image_token_logits(self, prompts: Sequence[Prompt | str], tokens: torch.Tensor) -> torch.Tensor:
        """For locate: code logits [B, N, codebook] of every position, each predicted with its checkerboard
        half of the grid masked and the other half given (show_o_sampling.checkerboard_logits); fp32."""
        checks.check_batch(FAMILY, prompts, tokens, "token rows")
        text = self.t2i_text_ids(prompts)
        return sampling.checkerboard_logits(lambda codes: self.full_logits(text, codes), tokens.to(self.device),
                                            self.mask_id)

    @torch.no_grad()
    def image_start_hidden(self, prompts: Sequence[Prompt | str]) -> torch.Tensor:
        """For locate: the last hidden state at <|soi|> with every code masked (the sampler's first step),
        float32 [B, D]."""
        from .show_o_lm import t2i_allowed

        text = self.t2i_text_ids(prompts)
        codes = torch.full((len(prompts), self.n_tokens), self.mask_id, device=self.device)
        ids = torch.cat([text, self.span_ids(codes)], dim=1)
        mask = additive(t2i_allowed(text, self.ids["pad"], self.n_tokens + 2), self.dtype)
        hidden, _ = self.runner.run(self.lm.model.embed_tokens(ids), mask)
        return hidden[:, text.shape[1]].float().cpu()


def _lm_from_state(phi_cfg: Any, vocab: int, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """transformers' PhiForCausalLM with the checkpoint's `showo.` tensors (prefix stripped), strictly;
    QK layer norms on exactly when the checkpoint has their weights."""
    from transformers import PhiForCausalLM

    phi_cfg.vocab_size = vocab
    # upstream builds the LM from llm_model_path's config as is (microsoft/phi-1_5 says qk_layernorm false);
    # a checkpoint that carries QK-norm weights was trained with them, so they decide.
    phi_cfg.qk_layernorm = any(".q_layernorm." in k for k in state)
    with torch.device("meta"):
        lm = PhiForCausalLM(phi_cfg)
    lm_state = {k.removeprefix("showo."): v for k, v in state.items() if k.startswith("showo.")}
    try:
        lm.load_state_dict(lm_state, strict=True, assign=True)
    except RuntimeError as e:
        raise FairgenError(f"{FAMILY}: the checkpoint does not fit its Phi config: {str(e).splitlines()[1:2]}") from None
    lm.model.rotary_emb = type(lm.model.rotary_emb)(phi_cfg)  # non-persistent buffers: rebuilt off meta
    return lm


def _tokenizer(llm_dir: Path) -> Any:
    """Phi-1.5's tokenizer with upstream's additions: [PAD] as padding, then the nine task tokens."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(llm_dir, padding_side="left")
    except (OSError, ValueError) as e:
        raise FairgenError(f"{FAMILY}: no usable tokenizer in {llm_dir}: {str(e).splitlines()[0]}") from None
    tok.add_special_tokens({"pad_token": "[PAD]"})
    tok.add_tokens(list(SPECIALS))
    return tok


def _phi_config(llm_dir: Path) -> Any:
    """The LM's PhiConfig from llm_model_path's config.json (microsoft/phi-1_5's: qk_layernorm false)."""
    from transformers import PhiConfig

    if not (llm_dir / "config.json").is_file():
        raise FairgenError(f"{FAMILY}: {llm_dir} has no config.json for the Phi LM")
    cfg = PhiConfig.from_pretrained(llm_dir)
    cfg._attn_implementation = "sdpa"
    return cfg


__all__ = ["MAX_TEXT", "ShowoModel"]
