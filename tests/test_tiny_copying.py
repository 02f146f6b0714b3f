"""Tiny tokenizers that make copying a name a regular pattern (``build-tiny --word_pieces``)."""

from __future__ import annotations

import json

from transformers import AutoTokenizer

from trl_empg.workflows.tiny import build_tokenizer, main

CORPUS = [
    'Question: Where was the creator of "The Distant Dostus" born? Search with search[query].',
    "Doc 1 (Title: Gouvaek Shaestebris) Gouvaek Shaestebris is a botanist born in 1910 in Thishour.",
    "search[The Distant Dostus] search[Gouvaek Shaestebris] answer[Thishour] click[b0jemx0r50] B0JEMX0R50",
] * 20


def _pieces(tokenizer, text: str) -> list[str]:
    return [tokenizer.decode([i]) for i in tokenizer(text)["input_ids"]]


def test_word_pieces_keep_a_name_the_same_tokens_after_a_space_a_bracket_or_a_quote():
    tokenizer = build_tokenizer(CORPUS, vocab_size=400, word_pieces=True)
    name = tokenizer("Shaestebris")["input_ids"]
    for context in ("of Shaestebris", "search[Shaestebris]", '"Shaestebris"', "(Title: Shaestebris)"):
        ids = tokenizer(context)["input_ids"]
        assert any(ids[i : i + len(name)] == name for i in range(len(ids))), (context, _pieces(tokenizer, context))
    assert _pieces(tokenizer, "search[The Distant]")[:3] == ["search", "[", "The"]
    # No merge joins a letter to a space or punctuation; text still decodes exactly.
    assert all(not (p.strip() and p != p.strip()) for p in _pieces(tokenizer, CORPUS[1]))
    assert tokenizer.decode(tokenizer(CORPUS[0])["input_ids"]) == CORPUS[0]


def test_default_tokenizer_is_unchanged_and_merges_across_the_bracket():
    tokenizer = build_tokenizer(CORPUS, vocab_size=400)
    assert "[" not in _pieces(tokenizer, "search[The Distant]")


def test_word_pieces_survive_save_and_reload(tmp_path):
    tokenizer = build_tokenizer(CORPUS, vocab_size=400, word_pieces=True)
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in CORPUS[:3]:
        assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]


def _build_coin_agent(tmp_path, *flags: str):
    """``build-tiny`` on three twx:coin tasks with a 600-token vocabulary, plus ``flags``."""
    argv = ["--env_id", "twx:coin", "--output_dir", str(tmp_path / "agent"), "--num_tasks", "3", "--vocab_size", "600"]
    return main([*argv, *flags])


def test_build_tiny_cli_passes_word_pieces(tmp_path):
    out = _build_coin_agent(tmp_path, "--word_pieces", "true")
    tokenizer = AutoTokenizer.from_pretrained(out)
    coin = tokenizer("coin")["input_ids"]
    assert tokenizer("take coin")["input_ids"][-len(coin) :] == coin
    assert tokenizer("[coin]")["input_ids"][1 : 1 + len(coin)] == coin
    assert json.loads((out / "config.json").read_text())["vocab_size"] == len(tokenizer)


def test_pretraining_lowers_the_loss_and_is_saved_beside_the_agent(tmp_path):
    import torch

    from trl_empg.workflows.tiny import build_tiny_model, pretrain_tiny_model

    tokenizer = build_tokenizer(CORPUS, vocab_size=400, word_pieces=True)
    model = build_tiny_model(tokenizer, hidden_size=32, intermediate_size=64)
    losses = pretrain_tiny_model(model, tokenizer, CORPUS, steps=30, batch_size=4, block_size=64)
    assert len(losses) == 30 and sum(losses[-5:]) < 0.8 * sum(losses[:5])
    assert not model.training and all(torch.isfinite(p).all() for p in model.parameters())

    out = _build_coin_agent(tmp_path, "--hidden_size", "32", "--pretrain_steps", "3")
    assert len(json.loads((out / "pretrain_losses.json").read_text())) == 3


def test_copy_drills_repeat_each_span_once():
    import torch

    from trl_empg.workflows.tiny import _copy_drills

    tokens = torch.arange(100, 200)
    rows = _copy_drills(tokens, 3, 64, torch.Generator().manual_seed(0))
    assert rows.shape == (3, 64) and bool(((rows >= 100) & (rows < 200)).all())
    row = rows[0].tolist()
    # The row starts with a span of 4-24 tokens followed by the same span.
    assert any(row[:k] == row[k : 2 * k] for k in range(4, 25))
