"""Image-token generation engine for Llama-family unified models (Janus / Janus-Pro, VILA-U): a static KV
cache, the guidance twin in the same forward, per-image random streams and (on CUDA) the token step
replayed as a CUDA graph.

Why not transformers' generate: it grows a dynamic cache (a copy of every layer's keys per token) and
launches a few hundred small kernels per token, so at audit batch sizes it is bound by kernel launches,
not by memory bandwidth (docs/performance.md). Here one image-token step is:

    logits = head(hidden)                       # [N, V] (N = B, or 2B with the unconditional twin rows)
    code   = sample(guide(logits), u[:, t])     # [B]; u: each image's own uniform numbers (models/sampling.py)
    hidden = decode(embed(code), column c)      # one token through every layer, keys/values written at c

The cache is allocated once, [2, N, L, H_kv, head_dim] per layer (keys, values; sequence-major),
L = prompt + image tokens. Prompts are left-padded, so every row's new token sits in the same column c and
one index_copy writes its key and value; rotary positions are per row (c minus the row's padding).
A decode step's attention (models/kv_attention.py) is, on CUDA, a Triton kernel (or aten's flash attention
in its variable-length form, when asked): each row reads exactly the columns it has written, no padding,
and the step's shapes do not depend on c, so one CUDA graph serves every step of a call. Elsewhere (CPU, fp32, an older
torch; and every prefill) SDPA reads the prompt and the current bucket (a multiple of `bucket` columns past
the prompt) with a mask for padding and for the columns not yet written, and a graph is captured per
bucket. The column and step counters live on the device, so a step has no host sync and can be captured
and replayed (`graphs=True`).

The layers are the checkpoint's own weights and modules (projections, MLP, rotary frequencies), called in
order; the engine owns the cache, the attention, the rotary product and (for transformers' LlamaRMSNorm)
the norm, each in fewer kernels than the modules' own code: a replayed step is a chain of small kernels,
so their count sets much of its time. For the same reason, with `stack=True`, a layer's q, k and v
projections run as one GEMM, and so do the MLP's gate and up: the decoder stacks their weights in place
(stack_in_place: moved once into one allocation, no copy kept), a stacked decode GEMM also reads its
weight closer to the memory bandwidth than three small ones (docs/performance.md), and the rotary
product and one index_copy then cover q, k and v together; o_proj and down_proj add the residual inside
their GEMM (_plus). should_stack says where stacking pays. A projection that is not a plain nn.Linear,
such as a LoRA layer injected by peft, is called as its own module, so the adapter runs here too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch.nn import functional as F

from . import kv_attention
from .sampling import Sampling, sample
from .stacking import groups, should_stack, stack_in_place

# Columns per length bucket. A step's attention reads on average BUCKET / 2 columns not yet written
# (VILA-U 7B at batch 64 on an H100: about 22 us per column per step), and each bucket costs one graph
# capture (an eager step and its recording): docs/performance.md, "VILA-U".
BUCKET = 64
# The decode attention (models/kv_attention.py): "auto" (the first of kv_attention.AUTO that can run: now
# triton, else the masked buckets), "varlen" or "triton" (that one where it can run, else the buckets) or
# "bucket" (always the masked buckets). Read when a decoder is made: benchmarks/vila_u_generation.py
# --attention times several in one run.
ATTENTION = "auto"


def _head_dim(cfg: object) -> int:
    """Per-head width of a Llama config (its head_dim, else hidden size / attention heads)."""
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def _norm(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """norm(x); for transformers' LlamaRMSNorm as one F.rms_norm call (one fused kernel on CUDA, against
    six for the module's fp32 cast, square, mean, rsqrt, scale and weight). The same arithmetic in fp32;
    in bf16 the weight is applied before the one rounding instead of after it (at most 1 bf16 ulp apart)."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    if type(norm) is LlamaRMSNorm:
        return F.rms_norm(x, norm.weight.shape, norm.weight, norm.variance_epsilon)
    return norm(x)


def _signed(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A rotary embedding's (cos, sin) [N, n, head_dim] -> (cos, sin with its first half negated), each
    [N, n, 1, head_dim] (token-major, a head axis to broadcast over): the factors of _rope."""
    half = cos.shape[-1] // 2
    return cos.unsqueeze(2), torch.cat([-sin[..., :half], sin[..., half:]], -1).unsqueeze(2)


def _rope(t: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of t [N, n, H, head_dim]: transformers' t*cos + rotate_half(t)*sin with
    the same products and sum (rolling by half a head swaps the halves; the sign sits in signed_sin), in
    4 kernels instead of 5."""
    return t * cos + t.roll(t.shape[-1] // 2, -1) * signed_sin


def _plus(x: torch.Tensor, linear: torch.nn.Module, y: torch.Tensor) -> torch.Tensor:
    """x + linear(y), x [N, n, D]: for a plain nn.Linear without bias as one GEMM that adds x to its product
    (cuBLAS's beta = 1), one kernel instead of two; else as written (a LoRA layer runs as itself)."""
    if type(linear) is torch.nn.Linear and linear.bias is None:
        return torch.addmm(x.flatten(0, -2), y.flatten(0, -2), linear.weight.t()).view_as(x)
    return x + linear(y)


def free_bytes(device: torch.device) -> int:
    """Free memory of a CUDA device, counting what torch's caching allocator holds unused (an earlier
    call's cache, kept for reuse), which the device itself reports as taken."""
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


@functools.cache
def _side_stream(device: torch.device) -> torch.cuda.Stream:
    """One stream per device for the warm-up run before each capture. A new stream per capture would make
    cuBLAS keep a new workspace each time (it keeps one per stream), memory auto_batch would then miss."""
    return torch.cuda.Stream(device)


class LlamaDecoder:
    """Runs a transformers LlamaModel (`lm`: its `layers`, `norm`, `rotary_emb`) over a static KV cache.

    rows N, prompt length L0 (left-padded, `mask` [N, L0] with 0 on padding), room for `new` more tokens;
    bucket: columns per length bucket of the masked attention (None: BUCKET); stack: run q|k|v and gate|up
    as stacked GEMMs (module docstring); attention: "auto", "varlen", "triton" or "bucket" (None:
    ATTENTION; kv_attention.choose resolves it to what runs, self.attention).
    prefill(embeds [N, L0, D], ids) -> last hidden [N, D]; step(embeds [N, 1, D], col, span(col)) ->
    hidden [N, D] of the token written at column `col` (a 0-d LongTensor on the device)."""

    def __init__(self, lm: torch.nn.Module, mask: torch.Tensor, new: int, bucket: int | None = None,
                 stack: bool = False, attention: str | None = None) -> None:
        # BUCKET and ATTENTION read here, not at import: benchmarks/vila_u_generation.py times others.
        self.lm, self.bucket, self.mask, self.stack = lm, bucket or BUCKET, mask, stack
        cfg = lm.config
        n, prompt = mask.shape
        self.prompt_len = prompt
        self.length = prompt + new
        param = next(lm.parameters())
        # Per layer, keys (kv[0]) and values (kv[1]) in one tensor, so that a stacked layer writes both
        # with one index_copy; sequence-major, so that varlen attention reads a layer's keys as flat rows.
        shape = (2, n, self.length, cfg.num_key_value_heads, _head_dim(cfg))
        self.kv = [torch.zeros(shape, dtype=param.dtype, device=param.device) for _ in lm.layers]
        # Which columns hold a real token: padding never does; generated columns always will.
        self.key_valid = torch.cat([mask.bool(), mask.new_ones(n, new, dtype=torch.bool)], dim=1)
        self.pad = (prompt - mask.long().sum(1)).unsqueeze(1)  # [N, 1] padding columns per row
        self.columns = torch.arange(self.length, device=mask.device)
        self.stacked = [tuple(stack_in_place(g) if stack else None for g in groups(layer)) for layer in lm.layers]
        self.attention = kv_attention.choose(attention or ATTENTION, param.device, param.dtype, _head_dim(cfg))
        self.varlen = self.attention != "bucket"  # each row reads its written columns: one shape for all steps
        if self.varlen:
            self.first = self.pad[:, 0].int()  # row i's first written column
        if self.attention == "varlen":
            rows = torch.arange(n + 1, dtype=torch.int32, device=mask.device)
            self.cu_q = rows  # and its keys as flat rows of a layer's [N * L] from i * L + pad_i on
            self.starts = rows * self.length + torch.cat([self.first, self.first.new_zeros(1)])

    def span(self, col: int) -> int:
        """Columns a decode step writing column `col` reads as a shape: with varlen attention the whole
        cache (each row then reads only what it has written; every step the same graph); else the prompt,
        then the generated columns up to col rounded up to the bucket. Counted from the prompt's end, so
        that every bucket holds `bucket` steps: one capture fewer than buckets from column 0 would need
        (whose first holds only what is left of it after the prompt), at the same mean of unwritten
        columns read."""
        if self.varlen:
            return self.length
        generated = col + 1 - self.prompt_len
        return min(self.length, self.prompt_len + -(-generated // self.bucket) * self.bucket)

    def _mask(self, cols: torch.Tensor, span: int, dtype: torch.dtype) -> torch.Tensor:
        """The additive mask [N, 1, n, span] of queries at `cols` over the first `span` columns: causal,
        never onto padding (a padding query sees itself: no NaN rows). Made once per step, as the additive
        mask SDPA would make of a bool one in every layer."""
        keys = self.columns[:span]
        seen = (self.key_valid[:, None, None, :span] & (keys <= cols[:, None])[None, None])
        seen = seen | (keys == cols[:, None])[None, None]
        return torch.zeros(seen.shape, dtype=dtype, device=seen.device).masked_fill_(~seen, float("-inf"))

    def _layers(self, x: torch.Tensor, cols: torch.Tensor, span: int) -> torch.Tensor:
        """x [N, n, D] at columns `cols` [n] (device) -> final-normed hidden [N, n, D]; attention over the
        first `span` columns (or, varlen, over what each row has written), causal, never onto padding."""
        positions = (cols.unsqueeze(0) - self.pad).clamp(min=0)  # [N, n] rotary positions
        cos, sin = _signed(*self.lm.rotary_emb(x, positions))  # [N, n, 1, hd], once per step for every layer
        heads, kv_heads = self.lm.config.num_attention_heads, self.lm.config.num_key_value_heads
        groups = heads // kv_heads + 2  # a stacked q|k|v output as [N, n, groups, kv_heads, head_dim]
        if any(qkv is not None for qkv, _ in self.stacked):
            # Rotary for those groups: q's and k's, then cos 1 and sin 0 for v's, which leaves v as it is
            # (v * 1 + roll(v) * 0 is v exactly), so k and v leave the rotary product side by side.
            cos_qkv, sin_qkv = (torch.cat([f.unsqueeze(2).expand(-1, -1, groups - 1, -1, -1),
                                           fill(f).unsqueeze(2)], 2)
                                for f, fill in ((cos, torch.ones_like), (sin, torch.zeros_like)))
        varlen = self.varlen and x.shape[1] == 1  # decode steps; a prefill reads its prompt with SDPA
        if varlen:
            used = (cols[-1] + 1 - self.first).int()  # [N] columns each row has written, this one too
        else:
            mask = self._mask(cols, span, x.dtype)
        for i, layer in enumerate(self.lm.layers):
            attn, (qkv, gate_up), kv = layer.self_attn, self.stacked[i], self.kv[i]
            h = _norm(layer.input_layernorm, x)
            if qkv is not None:  # rotary on q, k (and, as the identity, v) in one go; k and v written at once
                t = F.linear(h, *qkv).view(*h.shape[:2], groups, kv_heads, attn.head_dim)
                t = _rope(t, cos_qkv, sin_qkv)  # [N, n, groups, kv_heads, head_dim]
                q = t[:, :, :-2].flatten(2, 3)
                kv.index_copy_(2, cols, t[:, :, -2:].permute(2, 0, 1, 3, 4).to(kv.dtype))
            else:
                q = _rope(attn.q_proj(h).view(*h.shape[:2], -1, attn.head_dim), cos, sin)
                k = _rope(attn.k_proj(h).view(*h.shape[:2], -1, attn.head_dim), cos, sin)
                v = attn.v_proj(h).view(*h.shape[:2], -1, attn.head_dim)
                kv[0].index_copy_(1, cols, k.to(kv.dtype))
                kv[1].index_copy_(1, cols, v.to(kv.dtype))
            if varlen and self.attention == "triton":
                y = kv_attention.triton(q, kv, self.first, used, attn.scaling)
            elif varlen:
                y = kv_attention.varlen(q, kv, self.cu_q, self.starts, used, attn.scaling)
            else:
                y = kv_attention.masked(q, kv, mask, span, attn.scaling)
            x = _plus(x, attn.o_proj, y)
            h = _norm(layer.post_attention_layernorm, x)
            if gate_up is not None:
                gate, up = F.linear(h, *gate_up).chunk(2, dim=-1)
                x = _plus(x, layer.mlp.down_proj, layer.mlp.act_fn(gate) * up)
            else:
                x = x + layer.mlp(h)
        return _norm(self.lm.norm, x)

    def prefill(self, embeds: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """The prompts' keys and values written, their last hidden states returned [N, D].

        ids: the rows' token ids [N, L0], whose embeddings `embeds` are. Rows with the same ids and mask are
        one prompt: it runs once and its keys and values are copied to every row that has it. An audit's
        batch is one prompt under many seeds, and the unconditional twins are often one row, so most rows
        repeat one or two: a 7B prefill of 128 rows x 59 tokens is about 10^14 FLOP (~0.2 s on an H100),
        the copies about 4 GB at memory speed."""
        if ids is not None:
            _, same = torch.unique(torch.cat([ids, self.mask.long()], 1), dim=0, return_inverse=True)
            distinct = int(same.max()) + 1
            if distinct < len(ids):
                rows = torch.arange(len(ids), device=ids.device)
                first = torch.full((distinct,), len(ids), device=ids.device).scatter_reduce_(0, same, rows, "amin")
                once = LlamaDecoder(self.lm, self.mask[first], 0, self.bucket, self.stack, "bucket")
                hidden = once.prefill(embeds[first])
                for mine, theirs in zip(self.kv, once.kv):
                    mine[:, :, : self.prompt_len] = theirs[:, same]
                return hidden[same]
        cols = self.columns[: self.prompt_len]
        return self._layers(embeds, cols, self.prompt_len)[:, -1]

    def step(self, embeds: torch.Tensor, col: torch.Tensor, span: int) -> torch.Tensor:
        return self._layers(embeds, col.view(1), span)[:, -1]


class ImageEngine:
    """The token loop over a LlamaDecoder: guidance, sampling with each image's uniforms, next embeddings.

    head: hidden [N, D] -> logits [N, V]; embed: codes [N] -> input embeddings [N, 1, D]; uniforms
    float64 [B, T] on the device (image b's number for token t); s: the sampling settings. Rows are the B
    conditional rows, then (when s.cfg != 1) their B unconditional twins."""

    def __init__(self, decoder: LlamaDecoder, head: Callable[[torch.Tensor], torch.Tensor],
                 embed: Callable[[torch.Tensor], torch.Tensor], uniforms: torch.Tensor, s: Sampling) -> None:
        self.decoder, self.head, self.embed, self.s = decoder, head, embed, s
        self.uniforms = uniforms
        self.twins = 2 if s.cfg != 1.0 else 1
        device = uniforms.device
        # [B, T], or [B, T, D] for a family that draws D codes per token (VILA-U's residual depths).
        self.codes = torch.zeros(uniforms.shape, dtype=torch.long, device=device)
        self.t = torch.zeros((), dtype=torch.long, device=device)  # the step counter, on the device
        self.col = torch.tensor(decoder.prompt_len, dtype=torch.long, device=device)  # next column to write
        self.hidden: torch.Tensor | None = None

    def _sample(self) -> torch.Tensor:
        """Code t of every image from self.hidden, written to self.codes: LongTensor [B]."""
        u = self.uniforms.index_select(1, self.t.view(1)).squeeze(1)
        code = sample(self.s.guide(self.head(self.hidden)), self.s, u)
        self.codes.index_copy_(1, self.t.view(1), code.unsqueeze(1))
        return code

    def _token(self, span: int) -> None:
        """One image token: sample code t, then advance hidden, t and col in place (every tensor op on the
        device: capturable as a CUDA graph)."""
        code = self._sample()
        self.hidden.copy_(self.decoder.step(self.embed(code.repeat(self.twins, *[1] * (code.dim() - 1))), self.col, span))
        self.t += 1
        self.col += 1

    @torch.no_grad()
    def run(self, prompt_embeds: torch.Tensor, graphs: bool = False,
            ids: torch.Tensor | None = None) -> torch.Tensor:
        """Codes LongTensor [B, T] from the prompt embeddings [N, L0, D] (of token ids `ids` [N, L0], when
        given: repeated prompts are run once, LlamaDecoder.prefill)."""
        self.hidden = self.decoder.prefill(prompt_embeds, ids).clone()
        steps = self.codes.shape[1]
        col = self.decoder.prompt_len
        captured: dict[int, torch.cuda.CUDAGraph] = {}
        # One memory pool for this call's graphs: a step keeps nothing it allocates (its state lives in the
        # tensors above, allocated before any capture) and graphs never replay at once, so they can share
        # their scratch memory instead of each holding its own.
        pool = torch.cuda.graph_pool_handle() if graphs else None
        for i in range(steps - 1):
            span = self.decoder.span(col)
            if graphs and span in captured:
                captured[span].replay()
            elif graphs and i + 2 < steps and self.decoder.span(col + 1) == span:  # a later step replays it
                captured[span] = self._capture(span, pool)
            else:
                self._token(span)
            col += 1
        self._sample()  # the last code: no decode step after it
        return self.codes

    def _capture(self, span: int, pool: tuple) -> torch.cuda.CUDAGraph:
        """Run this token step and capture it, for the next steps at this span. torch requires a run
        before capturing (warm-up, on a side stream); that run is this step itself, so it is not undone
        or done again: the capture only records (the counters and the hidden state live on the device,
        so the graph it records reads them at every replay)."""
        stream = _side_stream(self.hidden.device)
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self._token(span)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # thread_local: only this thread's CUDA calls must keep off the capture. An audit perceives the
        # previous batch in a worker thread meanwhile, and a GPU perception backend allocates and runs
        # kernels there (from the allocator's regular pool, not the capture's).
        with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
            self._token(span)
        return graph


def kv_bytes_per_image(lm: torch.nn.Module, length: int, twins: int) -> int:
    """Bytes of KV cache one image needs: 2 (K, V) x layers x KV heads x head_dim x length x dtype x twins."""
    cfg = lm.config
    itemsize = next(lm.parameters()).element_size()
    return 2 * len(lm.layers) * cfg.num_key_value_heads * _head_dim(cfg) * length * itemsize * twins


def auto_batch(lm: torch.nn.Module, length: int, twins: int, cap: int = 1024, share: float = 0.6) -> int:
    """Largest batch whose KV cache fits in `share` of the free device memory (free_bytes; the rest:
    activations, logits, the sampler's sort); on a CPU, `cap`."""
    device = next(lm.parameters()).device
    if device.type != "cuda":
        return cap
    free = free_bytes(device)
    return max(1, min(cap, int(free * share) // kv_bytes_per_image(lm, length, twins)))


def even_chunk(left: int, most: int) -> int:
    """Rows of the next chunk when `left` rows go in the fewest chunks of at most `most`, of near-equal size:
    ceil(left / chunks left). A step costs nearly as much for few rows as for many, so 122 rows at 98 go
    as 61 + 61, not 98 + 24."""
    return -(-left // -(-left // most))


def in_batches(run: Callable[[int, int], torch.Tensor], total: int, batch: int) -> torch.Tensor:
    """run(start, stop) over [0, total) in the fewest chunks of at most `batch` rows, of near-equal size
    (even_chunk), concatenated. On a CUDA out-of-memory error the rest is retried at half the batch (down
    to 1, then the error stands): no row is lost."""
    out, start = [], 0
    while start < total:
        stop = start + even_chunk(total - start, batch)
        try:
            out.append(run(start, stop))
        except torch.OutOfMemoryError:
            if batch == 1:
                raise
            batch = max(1, batch // 2)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        start = stop
    return torch.cat(out)


__all__ = ["ATTENTION", "BUCKET", "ImageEngine", "LlamaDecoder", "auto_batch", "even_chunk", "in_batches", "free_bytes",
           "kv_bytes_per_image", "should_stack", "stack_in_place"]
