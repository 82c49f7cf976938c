"""A tiny randomly initialised Llama with a byte-level BPE tokenizer, saved like a checkpoint, for LLM tests."""

from __future__ import annotations

from pathlib import Path

import torch

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "You analyse how the speaker in a video call feels, from the clues seen in their face.",
    "Clues: face: smile 2.0-3.5 s (macro), brow raise 1.02-1.24 s (micro); voice: rising pitch, loud",
    "Transcript: that's wonderful news, I love it. Please send me the report before the meeting.",
    "Emotions: happy, joyful, angry, furious, sad, calm, surprised, anxious, bored, content.",
    "Which emotion does the speaker feel? The speaker feels happy, because they smile.",
    '{"labels": ["happy"], "valence": 0.8, "arousal": 0.5, "explanation": "because they smile"}',
]


def build_tiny_llama(folder: Path) -> Path:
    """A 2-layer Llama (hidden size 32) and a 600-token BPE tokenizer with a ChatML template, in `folder`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(folder)

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        initializer_range=0.3,  # wide enough that candidates' likelihoods clearly differ
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng():  # the same weights every time, and the caller's RNG left as it was
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(folder)
    return folder
