"""Show-o's language model, run layer by layer: prompt layout, attention masks and the two ways fairgen calls
the Phi-1.5 decoder (whole sequence, or image span over a cached text prefix).

Sequence layouts (ids; upstream `UniversalPrompting`, `create_attention_mask_predict_next`,
`create_attention_mask_for_mmu`):

  text to image   [PAD]*k <|t2i|> <bos> text <eos> | <|soi|> code*N <|eoi|>      (text part 129 tokens)
  understanding   <|mmu|> <|soi|> code*N <|eoi|> <bos> "USER: \\n{question} ASSISTANT:" answer...

In text to image, text rows attend causally and not to padding; the image span (<|soi|> to <|eoi|>)
attends to every non-padding position, itself included, in both directions. Text never attends to the
image span, so the text rows' keys and values are the same at every sampling step: `prefix` computes
them once and `span` runs only the N + 2 image-span positions against them. In understanding every row
attends causally and to the whole image prefix (up to <|eoi|>; the CLIP variants: to the CLIP features). Positions are 0..L-1 with padding
counted, as upstream passes none. Masks are additive, 0 or finfo(dtype).min.

The layers are the checkpoint's own transformers PhiForCausalLM modules (so peft's LoRA layers run
here too); this file owns only the attention product and the order of calls.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

MAX_TEXT = 128  # dataset.preprocessing.max_seq_length in every released Show-o config
TEXT_LEN = MAX_TEXT + 1  # the task token is added in front: text part of a t2i row
SPECIALS = ("<|soi|>", "<|eoi|>", "<|sov|>", "<|eov|>", "<|t2i|>", "<|mmu|>", "<|t2v|>", "<|v2v|>", "<|lvg|>")


def t2i_text(text_ids: list[int], ids: dict[str, int]) -> list[int]:
    """The 129-token text part of a t2i row from a prompt's token ids: <bos> put in front when missing,
    <|t2i|> before it, <eos> after, left-padded with [PAD]; cut to 128 tokens + <eos> when longer."""
    if not text_ids or text_ids[0] != ids["bos"]:
        text_ids = [ids["bos"], *text_ids]
    row = [ids["<|t2i|>"], *text_ids, ids["eos"]]
    if len(row) <= TEXT_LEN:
        return [ids["pad"]] * (TEXT_LEN - len(row)) + row
    return row[:TEXT_LEN - 1] + [ids["eos"]]


def additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean 'may attend' mask -> additive float mask [.., 1, q, k] of 0 / finfo(dtype).min."""
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min).unsqueeze(-3)


def t2i_allowed(text: torch.Tensor, pad_id: int, span: int) -> torch.Tensor:
    """Boolean mask [R, L, L] of whole t2i rows: text [R, 129] ids, then `span` image-span positions."""
    r, t = text.shape
    length = t + span
    pad = torch.cat([text == pad_id, text.new_zeros(r, span, dtype=torch.bool)], dim=1)  # [R, L]
    causal = torch.ones(length, length, dtype=torch.bool, device=text.device).tril()
    # A text row after the padding sees no padding column; padding rows see earlier padding (upstream).
    last_pad = torch.where(pad, torch.arange(length, device=text.device), -1).amax(1)  # [R]
    col = torch.arange(length, device=text.device)
    text_rows = causal & ~((col.view(1, -1, 1) > last_pad.view(-1, 1, 1)) & (col.view(1, 1, -1) <= last_pad.view(-1, 1, 1)))
    image_rows = (~pad).unsqueeze(1).expand(r, length, length)
    is_image_row = (col >= t).view(1, -1, 1)
    return torch.where(is_image_row, image_rows, text_rows)


def mmu_allowed(length: int, seen: slice, device: torch.device) -> torch.Tensor:
    """Boolean mask [L, L] of an understanding row: causal, and every row sees the positions `seen` (the
    discrete variants: 0..<|eoi|>; the CLIP variants: the CLIP features only, the system prompt stays causal)."""
    allowed = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    allowed[:, seen] = True
    return allowed


class PhiRunner:
    """Calls a transformers PhiForCausalLM's modules with fairgen's masks and an optional key/value prefix."""

    def __init__(self, lm: torch.nn.Module) -> None:
        self.lm = lm
        cfg = lm.config
        self.heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        # Phi-1.5's "gelu_new" is transformers' NewGELUActivation: the tanh approximation written as seven
        # elementwise kernels over [rows, 8192]: about 34 GB of memory traffic per layer and step at 512 px
        # and batch 64 in bf16, against 4 GB for F.gelu(approximate="tanh"), the same function in one
        # kernel (within 5e-7 in fp32; computed in fp32 inside, so closer to it in bf16).
        self.tanh_gelu = cfg.hidden_act in ("gelu_new", "gelu_pytorch_tanh")

    @property
    def body(self) -> torch.nn.Module:
        return self.lm.model

    def _attend(self, layer: torch.nn.Module, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        attn = layer.self_attn
        b, n, _ = h.shape
        q, k, v = (p(h).view(b, n, self.heads, self.head_dim).transpose(1, 2)
                   for p in (attn.q_proj, attn.k_proj, attn.v_proj))
        if attn.qk_layernorm:
            q, k = attn.q_layernorm(q), attn.k_layernorm(k)
        rot = cos.shape[-1]  # partial rotary: only the first `rot` channels of a head turn

        def rope(t: torch.Tensor) -> torch.Tensor:
            r, keep = t[..., :rot], t[..., rot:]
            rotated = torch.cat([-r[..., rot // 2:], r[..., :rot // 2]], dim=-1)
            return torch.cat([r * cos + rotated * sin, keep], dim=-1)

        q, k = rope(q), rope(k)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return attn.dense(out.transpose(1, 2).reshape(b, n, -1)), (k, v)

    def _mlp(self, mlp: torch.nn.Module, h: torch.Tensor) -> torch.Tensor:
        """PhiMLP's fc1 -> GELU -> fc2 (fc1 and fc2 called as modules, so LoRA layers on them run)."""
        if not self.tanh_gelu:
            return mlp(h)
        return mlp.fc2(F.gelu(mlp.fc1(h), approximate="tanh"))

    def run(self, embeds: torch.Tensor, mask: torch.Tensor, start: int = 0,
            past: list[tuple[torch.Tensor, torch.Tensor]] | None = None, keep: bool = False,
            hidden_at: int | None = None) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Final-layer-normed hidden states [R, n, D] of positions start..start+n-1 given embeddings [R, n, D],
        an additive mask [R, 1, n, start+n] and (when start > 0) every layer's cached prefix (k, v). With
        keep, also returns each layer's (k, v) over all start+n positions. hidden_at: return the residual
        stream entering layer `hidden_at` instead (locate's probes), no final norm."""
        body = self.body
        pos = torch.arange(start, start + embeds.shape[1], device=embeds.device).unsqueeze(0)
        cos, sin = body.rotary_emb(embeds, pos)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        x, kept = embeds, []
        for i, layer in enumerate(body.layers):
            if hidden_at == i:
                return x, kept
            h = layer.input_layernorm(x)
            a, kv = self._attend(layer, h, cos, sin, mask, past[i] if past is not None else None)
            if keep:
                kept.append(kv)
            x = a + self._mlp(layer.mlp, h) + x
        return body.final_layernorm(x), kept

    def prefix(self, embeds: torch.Tensor, mask: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every layer's keys and values of a text prefix [R, t, D] under its mask [R, 1, t, t]."""
        return self.run(embeds, mask, keep=True)[1]
