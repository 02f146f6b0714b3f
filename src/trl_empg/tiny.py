"""Small agents built offline: a BPE tokenizer trained on an environment's own text and a small Qwen2 model.

Pretrained weights cannot be fetched everywhere (CI, air-gapped boxes), so tests and the quickstart build their own
agent. The tokenizer is trained with exactly the pipeline transformers 5 rebuilds for ``model_type=qwen2`` tokenizers
(NFC normaliser, Qwen's split regex, byte-level without regex), so that it reloads through ``AutoTokenizer`` with
identical ids, and it carries TRL's bundled Qwen2.5 chat template, which TRL recognises for tool calling.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX
from trl.chat_template_utils import qwen2_5_chat_template

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"]

_TEMPLATE_SAMPLE = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "hello"},
    {"role": "assistant", "content": "hello"},
]


def _qwen2_pipeline(tokenizer: Tokenizer) -> Tokenizer:
    # The pipeline transformers' Qwen2Tokenizer rebuilds on load, so ids survive save/reload.
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def build_tokenizer(texts: Iterable[str], vocab_size: int = 1024, model_max_length: int = 4096) -> Qwen2Tokenizer:
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it as a Qwen2 tokenizer with the Qwen2.5 chat template.

    The chat template's own text (role headers, default system prompt, tool-call markup) is added to the corpus so
    that the template renders into few tokens.
    """
    template_text = Qwen2Tokenizer(vocab={"<|endoftext|>": 0}, merges=[]).apply_chat_template(
        _TEMPLATE_SAMPLE, chat_template=qwen2_5_chat_template, tokenize=False
    )
    corpus = [*texts, template_text, qwen2_5_chat_template]
    bpe = _qwen2_pipeline(Tokenizer(BPE(unk_token=None, fuse_unk=False, byte_fallback=False)))
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    vocab = bpe.get_vocab()
    merges = _merges_of(bpe)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        model_max_length=model_max_length,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    tokenizer.chat_template = qwen2_5_chat_template
    return tokenizer


def _merges_of(tokenizer: Tokenizer) -> list[tuple[str, str]]:
    # The tokenizers library exposes trained merges only through its JSON serialisation.
    state = json.loads(tokenizer.to_str())
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in state["model"]["merges"]]


def build_tiny_model(
    tokenizer: Qwen2Tokenizer,
    *,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 4096,
    tie_word_embeddings: bool = True,
    seed: int = 0,
) -> Qwen2ForCausalLM:
    """A randomly initialised Qwen2 causal LM sized for CPU training, with the tokenizer's special token ids."""
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def save_tiny_agent(model: Qwen2ForCausalLM, tokenizer: Qwen2Tokenizer, output_dir: str | Path) -> Path:
    """Save model and tokenizer so that ``from_pretrained(output_dir)`` rebuilds both."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir
