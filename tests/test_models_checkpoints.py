"""Tiny, randomly initialised checkpoints of the real architectures, built offline from small configs and
saved with save_pretrained, so tests load them through the same from_pretrained path a user checkpoint
takes. The tests here check that the hand-built tokenizers and processors behave like the released ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

# What the tokenizers are trained on: enough merges that words are a few tokens, as in real vocabularies.
CORPUS = [
    "A photo of the face of a nurse, a person", "A photo of the face of a firefighter, a person",
    "What is the gender of a nurse? Possible answers: male, female, unknown. Answer with a single word.",
    "male female unknown white black asian indian", "You are a helpful assistant. USER: ASSISTANT:",
] * 3

# transformers' convert_janus_weights_to_hf.py CHAT_TEMPLATE, as shipped with deepseek-community checkpoints.
from fairgen.models.janus import CHAT_TEMPLATE as JANUS_CHAT_TEMPLATE  # noqa: E402  (the checkpoints' template)
JANUS_SPECIALS = {"bos": "<\uff5cbegin\u2581of\u2581sentence\uff5c>", "eos": "<\uff5cend\u2581of\u2581sentence\uff5c>",
                  "pad": "<\uff5c\u2581pad\u2581\uff5c>", "image": "<image_placeholder>", "boi": "<begin_of_image>",
                  "eoi": "<end_of_image>"}
EMU3_CODES = 32


def byte_level_bpe(specials: list[str], vocab_size: int = 420, bos: str | None = None):
    """A byte-level BPE tokenizer (as DeepSeek's and Emu3's are) trained on CORPUS, with special tokens;
    `bos` is prepended to every encoding when given."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))])
    return tok


def build_janus(path: Path, kv_heads: int = 2) -> Path:
    """A Janus checkpoint: 2-layer Llama (hidden 32, 4 query heads, `kv_heads` key/value heads: 2 is grouped
    query attention, 4 is Janus-Pro's plain multi-head), 2-layer SigLIP on 32 px (16 patches), VQ with 64
    codes decoding a 4x4 grid to 32x32 px; tokenizer, processor (default system prompt on) and chat
    template."""
    from transformers import (
        JanusConfig,
        JanusForConditionalGeneration,
        JanusImageProcessorPil,
        JanusProcessor,
        JanusVisionConfig,
        JanusVQVAEConfig,
        LlamaConfig,
        PreTrainedTokenizerFast,
    )

    s = JANUS_SPECIALS
    specials = [s["bos"], s["eos"], s["pad"], s["image"], s["boi"], s["eoi"], "<|User|>", "<|Assistant|>"]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=byte_level_bpe(specials, bos=s["bos"]), bos_token=s["bos"], eos_token=s["eos"],
        pad_token=s["pad"], extra_special_tokens={"image_token": s["image"], "boi_token": s["boi"], "eoi_token": s["eoi"]})
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=256,
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id)
    vision = JanusVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8,
                               projection_dim=32, num_image_tokens=16, mlp_ratio=2.0)
    vq = JanusVQVAEConfig(embed_dim=8, num_embeddings=64, latent_channels=32, base_channels=32,
                          channel_multiplier=[1, 1, 2, 2], num_res_blocks=1, projection_dim=32, image_token_embed_dim=32)
    config = JanusConfig(text_config=text, vision_config=vision, vq_config=vq,
                         image_token_id=tokenizer.convert_tokens_to_ids(s["image"]))
    torch.manual_seed(0)
    model = JanusForConditionalGeneration(config)
    model.generation_config.guidance_scale = 5.0  # as convert_janus_weights_to_hf.py sets them
    model.generation_config.temperature = 1.0
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    processor = JanusProcessor(JanusImageProcessorPil(size={"height": 32, "width": 32}), tokenizer,
                               chat_template=JANUS_CHAT_TEMPLATE, use_default_system_prompt=True, num_image_tokens=16)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def build_emu3(path: Path) -> Path:
    """An Emu3 checkpoint: 2-layer LM (hidden 32), VQ with 32 codes and spatial factor 8 (a 4x4 grid is a
    32x32 px image), and a tokenizer with Emu3's special and visual tokens; no chat template, like the
    converted BAAI checkpoints."""
    from transformers import (
        Emu3Config,
        Emu3ForConditionalGeneration,
        Emu3ImageProcessor,
        Emu3Processor,
        Emu3TextConfig,
        PreTrainedTokenizerFast,
    )

    special = {"pad": "<|endoftext|>", "bos": "<|extra_203|>", "eos": "<|extra_204|>"}
    extra = {"image_token": "<image>", "boi_token": "<|image start|>", "eoi_token": "<|image end|>",
             "image_wrapper_token": "<|image token|>", "eof_token": "<|extra_201|>"}
    visual = [f"<|visual token{i:06d}|>" for i in range(EMU3_CODES)]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=byte_level_bpe([*special.values(), *extra.values(), "<|extra_200|>", *visual]),
        bos_token=special["bos"], eos_token=special["eos"], pad_token=special["pad"], extra_special_tokens=extra)
    text = Emu3TextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                          pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id)
    vq = {"codebook_size": EMU3_CODES, "embed_dim": 4, "latent_channels": 4, "temporal_downsample_factor": 4,
          "base_channels": 32, "channel_multiplier": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [],
          "hidden_size": 32}
    config = Emu3Config(text_config=text, vq_config=vq, vocabulary_map=tokenizer.get_vocab())
    torch.manual_seed(0)
    model = Emu3ForConditionalGeneration(config)
    image_processor = Emu3ImageProcessor(min_pixels=32 * 32, max_pixels=32 * 32, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    model.save_pretrained(path)
    Emu3Processor(image_processor, tokenizer).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def janus_dir(tmp_path_factory) -> Path:
    return build_janus(tmp_path_factory.mktemp("janus"))


@pytest.fixture(scope="session")
def emu3_dir(tmp_path_factory) -> Path:
    return build_emu3(tmp_path_factory.mktemp("emu3"))


def random_images(n: int, size: int = 32, seed: int = 0) -> list[Image.Image]:
    g = torch.Generator().manual_seed(seed)
    return [Image.fromarray(torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8).numpy())
            for _ in range(n)]


def test_janus_prompt_formats_are_upstreams(janus_dir):
    """The hand-built processor renders Janus's documented prompt strings and expands the image placeholder."""
    from transformers import JanusProcessor

    processor = JanusProcessor.from_pretrained(janus_dir)
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is shown in this image?"}, {"type": "image"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt == "<|User|>: What is shown in this image?\n<image_placeholder>\n\n<|Assistant|>:"
    enc = processor(text=prompt, images=random_images(1), return_tensors="pt")
    assert int((enc["input_ids"] == processor.tokenizer.image_token_id).sum()) == 16
    assert enc["pixel_values"].shape == (1, 3, 32, 32)
    gen = processor(text=["a nurse"], generation_mode="image", return_tensors="pt")["input_ids"][0].tolist()
    assert gen[0] == processor.tokenizer.bos_token_id
    assert gen[-1] == processor.tokenizer.convert_tokens_to_ids("<begin_of_image>")


def test_emu3_generation_prompt_is_upstreams(emu3_dir):
    """Emu3's generation prefix: <bos> text <|image start|> "h*w" <|image token|>."""
    from transformers import Emu3Processor

    processor = Emu3Processor.from_pretrained(emu3_dir)
    enc = processor(text=["a nurse"], return_for_image_generation=True, image_area=1024, return_tensors="pt")
    text = processor.tokenizer.decode(enc["input_ids"][0])
    assert text == "<|extra_203|>a nurse<|image start|>4*4<|image token|>"
