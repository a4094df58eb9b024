"""Stacked projections for the engine's decode step (models/engine.py): a layer's q, k and v projections as
one GEMM, and the MLP's gate and up, with their weights moved in place into one allocation (no copy kept).
A stacked decode GEMM reads its weight closer to the memory bandwidth than three small ones and launches
one kernel instead of three (docs/performance.md)."""

from __future__ import annotations

import torch


def _stackable(mods: list[torch.nn.Module]) -> bool:
    """Plain nn.Linear modules (a peft LoRA layer adds its own product and must run as itself), all with or
    all without a bias, their weights of one dtype on one device."""
    return (bool(mods) and all(type(m) is torch.nn.Linear for m in mods)
            and len({(m.bias is None, m.weight.dtype, m.weight.device, m.weight.shape[1:])
                     for m in mods}) == 1)


def _rows_of_one_tensor(parts: list[torch.Tensor]) -> torch.Tensor | None:
    """The tensor whose consecutive rows `parts` are (each contiguous, each starting where the one before
    ends in one storage), as a view; None where they are not laid out so."""
    first = parts[0]
    offset = first.storage_offset()
    for p in parts:
        if not p.is_contiguous() or p.untyped_storage().data_ptr() != first.untyped_storage().data_ptr() \
                or p.storage_offset() != offset:
            return None
        offset += p.numel()
    return first.new_empty(0).set_(first.untyped_storage(), first.storage_offset(),
                                   (sum(p.shape[0] for p in parts), *first.shape[1:]))


def stack_in_place(mods: list[torch.nn.Module]) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(weight, bias) stacking the output rows of the modules, so that their products are one GEMM whose
    output splits back into theirs; None where they are not _stackable.

    The stacked weight is not a copy: the modules' weights (and biases) are moved into one allocation
    and each parameter becomes a view of its rows (`param.data = view`: the same Parameter objects, so an
    optimiser or hook holding them stays valid, and the values are unchanged). So stacking costs no memory
    beyond one group while it moves, and a later call finds the rows in place and moves nothing. (A 7B
    decoder's stacked copies would take 8-9 GB: they were made only where a tenth of the free memory held
    them, which left a 7B model on an 80 GB card unstacked.)"""
    if not _stackable(mods):
        return None
    out = []
    for params in ([m.weight for m in mods], None if mods[0].bias is None else [m.bias for m in mods]):
        if params is None:
            out.append(None)
            continue
        stacked = _rows_of_one_tensor([p.data for p in params])
        if stacked is None:
            with torch.no_grad():
                stacked = torch.cat([p.data for p in params])
            for p, view in zip(params, stacked.split([p.shape[0] for p in params])):
                p.data = view
            if stacked.is_cuda:  # hand the old weights' blocks back: free_bytes would count them as free,
                torch.cuda.empty_cache()  # but a KV cache allocation larger than each could not use them
        out.append(stacked)
    return out[0], out[1]


def groups(layer: torch.nn.Module) -> tuple[list[torch.nn.Module], list[torch.nn.Module]]:
    """A decoder layer's projections that run as one GEMM: ([q, k, v], [gate, up]); the second empty where
    the MLP is not transformers' LlamaMLP (whose forward, down(act(gate(x)) * up(x)), the engine repeats)."""
    from transformers.models.llama.modeling_llama import LlamaMLP

    attn, mlp = layer.self_attn, layer.mlp
    return [attn.q_proj, attn.k_proj, attn.v_proj], [mlp.gate_proj, mlp.up_proj] if type(mlp) is LlamaMLP else []


def should_stack(lm: torch.nn.Module) -> bool:
    """Whether a decoder over `lm` should stack its projections: on CUDA only, where what stacking saves is
    kernel launches and bandwidth (stack_in_place costs no memory; on a CPU there is nothing to gain)."""
    return next(lm.parameters()).device.type == "cuda"


__all__ = ["groups", "should_stack", "stack_in_place"]
