"""What the transformers-based families share, one module per concern:

    loading    resolving a checkpoint (directory or hub id), version checks, from_pretrained on a device and
               dtype, Fingerprint provenance, default sampling from generation_config.json, LoRA targets
    decoding   positions from a padded mask and a KV-cached decoder loop (the reference path)
    chat       ChatFormat and exact answer / caption scoring through a chat template
    images     decoder pixels -> PIL images
    checks     one-line input errors

Functions, not a base class: each family file reads top to bottom as its own adapter (diffusers' style),
calling these helpers where the work is the same.
"""
