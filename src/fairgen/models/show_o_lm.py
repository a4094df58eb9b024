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


def rope(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Partial rotary embedding (transformers' rotate_half form) of t [.., n, d]: the first cos.shape[-1]
    channels turn, the rest pass. Differentiable."""
    rot = cos.shape[-1]
    r, keep = t[..., :rot], t[..., rot:]
    rotated = torch.cat([-r[..., rot // 2:], r[..., :rot // 2]], dim=-1)
    return torch.cat([r * cos + rotated * sin, keep], dim=-1)


def rope_into(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """rope(t, cos, sin) written into `out` (any strides, e.g. a slot of a key buffer): the same products
    and sums, rounded the same way (so bit for bit the same in any dtype), without the negation and the
    two concatenations: about 4.5 passes over t's size instead of 7. No autograd (out= arguments)."""
    rot = cos.shape[-1]
    half = rot // 2
    r1, r2 = t[..., :half], t[..., half:rot]
    o1, o2 = out[..., :half], out[..., half:rot]
    torch.mul(r1, cos[..., :half], out=o1)
    o1.sub_(r2 * sin[..., :half])
    torch.mul(r2, cos[..., half:], out=o2)
    o2.add_(r1 * sin[..., half:])
    out[..., rot:].copy_(t[..., rot:])
    return out


class CachedPrefix:
    """A t2i batch's text prefix as the image span attends to it, for the fast path (inference only).

    kv: every layer's prefix (keys, values) [R, H, t, d], computed once (PhiRunner.prefix). visible [R, t]:
    the prefix positions the span sees (all but padding). The span sees those and all of itself, with no
    order: so when each row's visible positions are a suffix first[r]..t-1 of the prefix (left padding, as
    t2i_text builds it), the rows with the same first[r] attend to keys [first, t + span) with no mask at
    all, and SDPA can run its flash kernel (an additive mask rules it out; the memory-efficient kernel
    with a bias is what runs then). Rows are grouped by contiguous runs of equal first[r] (sort the rows
    by it for the fewest calls). Otherwise (a [PAD] token inside a prompt) one call with the mask.
    The keys and values of [prefix | span] live in one buffer pair [R, H, t + span, d] reused by every
    layer and step: a layer copies its prefix in (t of t + span positions) and writes the span's keys and
    values into the rest, instead of concatenating prefix and span anew per layer and step.
    fused: every layer's input projections in one matrix (PhiRunner.fused_inputs), or None."""

    def __init__(self, kv: list[tuple[torch.Tensor, torch.Tensor]], visible: torch.Tensor, span: int,
                 fused: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
        r, heads, t, d = kv[0][0].shape
        self.kv, self.t, self.fused = kv, t, fused
        self.keys = kv[0][0].new_empty(r, heads, t + span, d)
        self.values = torch.empty_like(self.keys)
        first = t - visible.sum(1)
        suffix = bool((visible == (torch.arange(t, device=visible.device) >= first.unsqueeze(1))).all())
        self.mask: torch.Tensor | None = None
        self.groups: list[tuple[int, int, int]] = []  # (row start, row end, first visible key)
        if suffix:
            edges = [0, *(torch.nonzero(first[1:] != first[:-1]).flatten() + 1).tolist(), r]
            firsts = first.tolist()
            self.groups = [(a, b, firsts[a]) for a, b in zip(edges[:-1], edges[1:])]
        else:
            seen = torch.cat([visible, visible.new_ones(r, span)], dim=1)
            self.mask = additive(seen.unsqueeze(1), self.keys.dtype)  # [R, 1, 1, t + span]

    def slots(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `layer`'s prefix copied into the buffers; returns where the span's keys and values go."""
        self.keys[:, :, :self.t].copy_(self.kv[layer][0])
        self.values[:, :, :self.t].copy_(self.kv[layer][1])
        return self.keys[:, :, self.t:], self.values[:, :, self.t:]

    def attend(self, q: torch.Tensor) -> torch.Tensor:
        """Attention output [R, n, H, d] of the span's queries q [R, H, n, d] over the filled buffers."""
        if self.mask is not None:
            out = F.scaled_dot_product_attention(q, self.keys, self.values, attn_mask=self.mask)
            return out.transpose(1, 2)
        outs = [F.scaled_dot_product_attention(q[a:b], self.keys[a:b, :, first:], self.values[a:b, :, first:])
                for a, b, first in self.groups]
        return outs[0].transpose(1, 2) if len(outs) == 1 else torch.cat([o.transpose(1, 2) for o in outs])


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

    def fused_inputs(self) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Per layer, q_proj, k_proj, v_proj and fc1 stacked into one weight [3D + F, D] and bias: the
        four products of the layer's input h in one matrix product (Phi runs attention and MLP side by
        side on the same h): h is read once instead of four times, and one wide GEMM runs closer to the
        card's peak than three narrow ones. None when any of them is not a plain Linear with a bias (a
        LoRA layer in place: the modules are called instead). Built per batch, so it follows the weights."""
        out = []
        for layer in self.body.layers:
            attn = layer.self_attn
            parts = (attn.q_proj, attn.k_proj, attn.v_proj, layer.mlp.fc1)
            if any(type(m) is not torch.nn.Linear or m.bias is None for m in parts):
                return None
            out.append((torch.cat([m.weight for m in parts]), torch.cat([m.bias for m in parts])))
        return out

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """[R, n, H*d] -> [R, H, n, d] (a view)."""
        return t.view(*t.shape[:2], self.heads, self.head_dim).transpose(1, 2)

    def _attend(self, layer: torch.nn.Module, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Attention of whole rows (differentiable): output [R, n, D] and the layer's (k, v)."""
        attn = layer.self_attn
        q, k, v = (self._heads(p(h)) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
        if attn.qk_layernorm:
            q, k = attn.q_layernorm(q), attn.k_layernorm(k)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)
        return attn.dense(out.reshape(*h.shape[:2], -1)), (k, v)

    def _span_block(self, layer: torch.nn.Module, x: torch.Tensor, h: torch.Tensor, cos: torch.Tensor,
                    sin: torch.Tensor, prefix: CachedPrefix, i: int) -> torch.Tensor:
        """One Phi block over the image span against the cached prefix (inference): the residual stream
        leaving layer i, from the stream x and its layer norm h [R, n, D]."""
        attn = layer.self_attn
        b, n, d = h.shape
        if prefix.fused is not None:
            q, k, v, f = F.linear(h, *prefix.fused[i]).split([d, d, d, layer.mlp.fc1.out_features], dim=-1)
            m = layer.mlp.fc2(self._gelu(layer.mlp, f))
        else:
            q, k, v = (p(h) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
            m = self._mlp(layer.mlp, h)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        if attn.qk_layernorm:
            q, k = attn.q_layernorm(q), attn.k_layernorm(k)
        k_slot, v_slot = prefix.slots(i)
        rope_into(k, cos, sin, k_slot)
        v_slot.copy_(v)
        q = rope_into(q, cos, sin, q.new_empty(b, n, self.heads, self.head_dim).transpose(1, 2))
        return attn.dense(prefix.attend(q).reshape(b, n, d)) + m + x

    def _gelu(self, mlp: torch.nn.Module, f: torch.Tensor) -> torch.Tensor:
        """PhiMLP's activation of fc1's output f: one tanh-GELU kernel for gelu_new (tanh_gelu, above),
        else the model's own activation."""
        return F.gelu(f, approximate="tanh") if self.tanh_gelu else mlp.activation_fn(f)

    def _mlp(self, mlp: torch.nn.Module, h: torch.Tensor) -> torch.Tensor:
        """PhiMLP's fc1 -> GELU -> fc2 (fc1 and fc2 called as modules, so LoRA layers on them run)."""
        return mlp.fc2(self._gelu(mlp, mlp.fc1(h)))

    def run(self, embeds: torch.Tensor, mask: torch.Tensor | None, start: int = 0,
            prefix: CachedPrefix | None = None, keep: bool = False,
            hidden_at: int | None = None) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Final-layer-normed hidden states [R, n, D] of positions start..start+n-1 given embeddings [R, n, D]
        and either an additive mask [R, 1, n, n] (start 0) or the cached text prefix of the first `start`
        positions (the image span of t2i rows; inference only). With keep (and no prefix), also returns each
        layer's (k, v) over the n positions. hidden_at: return the residual stream entering layer
        `hidden_at` instead (locate's probes), no final norm."""
        body = self.body
        pos = torch.arange(start, start + embeds.shape[1], device=embeds.device).unsqueeze(0)
        cos, sin = body.rotary_emb(embeds, pos)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        x, kept = embeds, []
        for i, layer in enumerate(body.layers):
            if hidden_at == i:
                return x, kept
            h = layer.input_layernorm(x)
            if prefix is not None:
                x = self._span_block(layer, x, h, cos, sin, prefix, i)
                continue
            a, kv = self._attend(layer, h, cos, sin, mask)
            if keep:
                kept.append(kv)
            x = a + self._mlp(layer.mlp, h) + x
        return body.final_layernorm(x), kept

    def prefix(self, embeds: torch.Tensor, mask: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every layer's keys and values of a text prefix [R, t, D] under its mask [R, 1, t, t]."""
        return self.run(embeds, mask, keep=True)[1]
