"""GPU smoke run of the `janus:` adapter at Janus-Pro's real shapes, with random weights (no downloads).

Builds a randomly initialised Janus from benchmarks/configs/<name>.json (Janus-Pro-1B's shapes by default) and
a byte-level BPE tokenizer with Janus's special tokens, saves them with save_pretrained, loads the directory
back through `fairgen.models.load("janus:<dir>")` (the path a user checkpoint takes), audits one batch of
images through `fairgen.audit` with the paper's sampling (cfg 3.0, temperature 0.9, top-p 0.6), and times one
forward + backward of `image_token_logprob` with LoRA on the language model (a BPO step's cost). The audit's
time includes writing images, perception, the report and hashing the checkpoint; `generate_one_batch_s` is
the sampler alone (warm), for the same batch.
Random weights draw no faces: the audit's face rate is 0 by design; this measures plumbing, speed and memory.

    python benchmarks/janus_smoke.py                                  # Janus-Pro-1B shapes, bf16, CUDA
    python benchmarks/janus_smoke.py --config benchmarks/configs/janus_tiny.json --device cpu --dtype fp32

Writes <out>/smoke.json (timings in seconds, peak GPU memory in GiB) and prints it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import fairgen
from fairgen import models, suites
from fairgen.models.sampling import PRESETS

CONFIGS = Path(__file__).parent / "configs"
CORPUS = ["A photo of the face of a nurse, a person",
          "What is the gender of a doctor? Possible answers: male, female, unknown. Answer with a single word.",
          "You are a helpful language and vision assistant."] * 3
SPECIALS = {"bos": "<\uff5cbegin\u2581of\u2581sentence\uff5c>", "eos": "<\uff5cend\u2581of\u2581sentence\uff5c>",
            "pad": "<\uff5c\u2581pad\u2581\uff5c>", "image_token": "<image_placeholder>",
            "boi_token": "<begin_of_image>", "eoi_token": "<end_of_image>"}
# Janus's chat template, reduced to the single user turn fairgen sends (see transformers'
# convert_janus_weights_to_hf.py for the full one).
CHAT_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}<|User|>: {% else %}<|Assistant|>: {% endif %}"
                 "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image_placeholder>\n{% else %}"
                 "{{ c['text'] }}{% endif %}{% endfor %}{% if m['role'] == 'user' %}\n\n{% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}<|Assistant|>:{% endif %}")


def tokenizer():
    """A byte-level BPE tokenizer (as DeepSeek's is) with Janus's special tokens, trained on a few sentences."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors, trainers
    from tokenizers import models as tmodels
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(tmodels.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [*SPECIALS.values(), "<|User|>", "<|Assistant|>"]
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bos = SPECIALS["bos"]
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))])
    extra = {k: SPECIALS[k] for k in ("image_token", "boi_token", "eoi_token")}
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=SPECIALS["eos"],
                                   pad_token=SPECIALS["pad"], extra_special_tokens=extra)


def build_checkpoint(config_path: Path, out: Path, dtype: torch.dtype, device: str) -> Path:
    """Random-init Janus of the config's shapes + tokenizer + processor, saved to `out`."""
    from transformers import (
        JanusConfig,
        JanusForConditionalGeneration,
        JanusImageProcessorPil,
        JanusProcessor,
        JanusVisionConfig,
        JanusVQVAEConfig,
        LlamaConfig,
    )

    spec = json.loads(config_path.read_text())
    tok = tokenizer()
    text = {k: v for k, v in spec["text_config"].items() if k != "model_type"}
    config = JanusConfig(
        text_config=LlamaConfig(**text, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                eos_token_id=tok.eos_token_id),
        vision_config=JanusVisionConfig(**spec["vision_config"]), vq_config=JanusVQVAEConfig(**spec["vq_config"]),
        image_token_id=tok.image_token_id)
    torch.manual_seed(0)
    with torch.device(device):  # initialise where it runs: a CPU init of 2B parameters takes minutes
        model = JanusForConditionalGeneration(config).to(dtype)
    for key, value in spec["generation_config"].items():
        setattr(model.generation_config, key, value)
    size = spec["vision_config"]["image_size"]
    processor = JanusProcessor(JanusImageProcessorPil(size={"height": size, "width": size}), tok,
                               chat_template=CHAT_TEMPLATE, use_default_system_prompt=True,
                               num_image_tokens=spec["vision_config"]["num_image_tokens"])
    model.save_pretrained(out)
    processor.save_pretrained(out)
    del model
    return out


def lora_step_seconds(model, prompts: list[str], images) -> float:
    """Wall time of one image_token_logprob forward + backward with rank-16 LoRA on the LM."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model.lora_root, LoraConfig(r=16, lora_alpha=32, target_modules=model.lora_targets))
    sync()
    start = time.perf_counter()
    model.image_token_logprob(prompts, images).mean().backward()
    sync()
    elapsed = time.perf_counter() - start
    peft_model.unload()
    return elapsed


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=CONFIGS / "janus_pro_1b.json")
    parser.add_argument("--prompts", type=int, default=4, help="occupations:test prompts in the batch")
    parser.add_argument("--images-per-prompt", type=int, default=4)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--out", type=Path, default=Path("runs/janus_smoke"))
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    report: dict = {"config": args.config.name, "device": args.device, "dtype": args.dtype,
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        checkpoint = build_checkpoint(args.config, Path(tmp) / "janus", dtype, args.device)
        report["build_s"] = time.perf_counter() - start

        start = time.perf_counter()
        model = models.load(f"janus:{checkpoint}", device=args.device, dtype=args.dtype)
        report["load_s"] = time.perf_counter() - start
        report["parameters"] = sum(p.numel() for p in model.hf.parameters())

        prompts = suites.load("occupations:test")[:args.prompts]
        n_images = args.prompts * args.images_per_prompt
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        result = fairgen.audit(model=model, suite=prompts, images_per_prompt=args.images_per_prompt,
                               batch_size=n_images, perception_backend="world", sampling=PRESETS["paper"],
                               out=Path(tmp) / "audit")
        sync()
        report["audit_one_batch_s"] = time.perf_counter() - start
        report["images"] = n_images
        report["images_per_s"] = n_images / report["audit_one_batch_s"]
        report["face_rate"] = result.summary["face_rate"]

        texts = [p.text for p in prompts for _ in range(args.images_per_prompt)]
        start = time.perf_counter()
        images = model.generate(texts, list(range(n_images)), **PRESETS["paper"])
        sync()
        report["generate_one_batch_s"] = time.perf_counter() - start
        report["ms_per_token_step"] = 1000 * report["generate_one_batch_s"] / model.n_image_tokens
        texts, images = texts[:args.prompts], images[:args.prompts]
        report["lora_fwd_bwd_s"] = lora_step_seconds(model, texts, images)
        if torch.cuda.is_available():
            report["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "smoke.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
