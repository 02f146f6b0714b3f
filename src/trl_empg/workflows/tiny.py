"""Small agents built offline: a BPE tokenizer trained on an environment's own text and a small Qwen2 model.

Pretrained weights cannot be fetched everywhere (CI, air-gapped boxes), so tests and the quickstart build their own
agent. The tokenizer is trained with exactly the pipeline transformers 5 rebuilds for ``model_type=qwen2`` tokenizers
(NFC normaliser, Qwen's split regex, byte-level without regex), so that it reloads through ``AutoTokenizer`` with
identical ids, and it carries TRL's bundled Qwen2.5 chat template, which TRL recognises for tool calling.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX
from trl.chat_template_utils import qwen2_5_chat_template

from ..rollout.settings import EnvArguments

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"]

#: Training pre-tokens of ``build_tokenizer(word_pieces=True)``: runs of letters, and any other character alone (Qwen's
#: split regex keeps digits single too, so merges of digits could never apply).
WORD_PIECE_REGEX = r"\p{L}+|[^\p{L}]"

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


def build_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 1024,
    model_max_length: int = 4096,
    whole_phrases: Iterable[str] = (),
    word_pieces: bool = False,
) -> Qwen2Tokenizer:
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it as a Qwen2 tokenizer with the Qwen2.5 chat template.

    The chat template's own text (role headers, default system prompt, tool-call markup) is added to the corpus so
    that the template renders into few tokens. Each of ``whole_phrases`` (for example an environment's actions)
    becomes one added token, matched as a whole word wherever it appears, in prompts and replies alike.

    With ``word_pieces`` the merges only join the letters of one word, never a space or
    punctuation, so a word is the same tokens wherever it appears. Qwen's split regex keeps a word's leading space
    or bracket in its pre-token, so otherwise ``" Barur"`` (in a question) and ``"[Barur"`` (in ``search[Barur]``)
    get different tokens and an agent cannot learn to copy a name it has never seen as a regular pattern; with it
    both are the separate piece (``" "`` or ``"["``) followed by the same tokens of ``"Barur"``. Only training
    changes: the saved tokenizer keeps the Qwen2 pipeline, which never applies a merge the corpus did not produce.
    """
    template_text = Qwen2Tokenizer(vocab={"<|endoftext|>": 0}, merges=[]).apply_chat_template(
        _TEMPLATE_SAMPLE, chat_template=qwen2_5_chat_template, tokenize=False
    )
    corpus = [*texts, template_text, qwen2_5_chat_template]
    bpe = _qwen2_pipeline(Tokenizer(BPE(unk_token=None, fuse_unk=False, byte_fallback=False)))
    if word_pieces:
        bpe.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(WORD_PIECE_REGEX), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
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
    tokenizer.add_tokens([AddedToken(phrase, single_word=True) for phrase in sorted(set(whole_phrases))])
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


def pretrain_tiny_model(
    model: Qwen2ForCausalLM,
    tokenizer: Qwen2Tokenizer,
    texts: Sequence[str],
    *,
    steps: int,
    learning_rate: float = 3e-3,
    batch_size: int = 16,
    block_size: int = 256,
    copy_fraction: float = 0.0,
    seed: int = 0,
) -> list[float]:
    """Next-token pretraining of ``model`` on ``texts`` (every token trained), in place; returns the loss per step.

    A stand-in for the pretraining a real LLM brings: the texts are tokenised, joined with EOS and cut into blocks of
    ``block_size`` tokens; each step trains ``batch_size`` random blocks with AdamW (linear warm-up over the first
    tenth, then cosine decay). An environment's text repeats its names (a search result's title and its first words,
    a query and the passages it finds, an ASIN on the result page and in the action list), so this is where a small
    model learns to copy, from every token rather than from the few reply tokens a warm start trains.

    ``copy_fraction`` of each batch are copy drills instead: spans of 4-24 tokens drawn at random from the corpus's
    token frequencies, each followed by itself. Random spans can only be predicted by looking back, which makes a
    2-layer model form induction heads (attend to the earlier occurrence of the current token, predict what followed
    it); the env text alone did not, in 600 steps (see ``benchmarks/tiny_warm_starts.py``).
    """
    import math

    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    blocks = torch.tensor(ids[: len(ids) // block_size * block_size]).view(-1, block_size)
    if steps < 1 or len(blocks) == 0:
        raise ValueError(f"Pretraining needs steps >= 1 and at least {block_size} tokens of text.")
    generator = torch.Generator().manual_seed(seed)
    unigram = torch.tensor(ids)
    num_copy = round(batch_size * copy_fraction)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (
            (step + 1) / warmup
            if step < warmup
            else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
        ),
    )
    model.train()
    losses = []
    for _ in range(steps):
        batch = blocks[torch.randint(len(blocks), (batch_size - num_copy,), generator=generator)]
        if num_copy:
            batch = torch.cat([batch, _copy_drills(unigram, num_copy, block_size, generator)])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses


def _copy_drills(tokens: torch.Tensor, rows: int, block_size: int, generator: torch.Generator) -> torch.Tensor:
    # Rows of random spans, each repeated once: (span, span, span', span', ...), cut at block_size.
    out = []
    for _ in range(rows):
        row: list[torch.Tensor] = []
        length = 0
        while length < block_size:
            k = int(torch.randint(4, 25, (1,), generator=generator))
            span = tokens[torch.randint(len(tokens), (k,), generator=generator)]
            row += [span, span]
            length += 2 * k
        out.append(torch.cat(row)[:block_size])
    return torch.stack(out)


def save_tiny_agent(model: Qwen2ForCausalLM, tokenizer: Qwen2Tokenizer, output_dir: str | Path) -> Path:
    """Save model and tokenizer so that ``from_pretrained(output_dir)`` rebuilds both."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir


def env_corpus(env_id: str, env_kwargs: dict | None = None, num_tasks: int = 100, max_turns: int = 30) -> list[str]:
    """Texts an agent sees and says in ``env_id``: system prompts, observations with admissible actions, gold replies
    in both prompt styles, and every admissible action as a bare reply, from the gold plans of the first
    ``num_tasks`` train tasks.

    The bare replies matter: in a list an action follows a space (``" inventory"``), but a reply starts with it, and
    byte-level BPE gives the two forms different tokens. Trained only on gold replies, a tokenizer leaves actions the
    plans never take in pieces (coin's ``"inventory"`` as ``in|vent|ory``), and tiny agents then splice the pieces of
    two actions into an invalid one (``"looventory"``)."""
    return _walk_gold_plans(env_id, env_kwargs, num_tasks, max_turns)[0]


def _walk_gold_plans(
    env_id: str, env_kwargs: dict | None, num_tasks: int, max_turns: int
) -> tuple[list[str], set[str]]:
    # The corpus of env_corpus, and every admissible action met along the way.
    from ..envs import make
    from ..rollout import AgentPrompts

    env = make(env_id, **(env_kwargs or {}))
    actions: set[str] = set()
    try:
        prompts = [AgentPrompts(style, True, getattr(env, "task_description", "")) for style in ("react", "plain")]
        texts = [p.system() for p in prompts] + [p.expected_format() for p in prompts]
        for seed in env.task_seeds("train")[:num_tasks]:
            observation, info = env.reset(seed=seed, split="train")
            texts.append(prompts[0].first_user(observation, info["admissible_actions"]))
            texts += info["admissible_actions"]
            actions.update(info["admissible_actions"])
            for action in info["gold_actions"][:max_turns]:
                texts += [action, f"<think>I should {action}.</think><action>{action}</action>"]
                observation, _, done, info = env.step(action)
                texts.append(prompts[0].observation(observation, info["admissible_actions"]))
                texts += info["admissible_actions"]
                actions.update(info["admissible_actions"])
                if done:
                    break
        return texts, actions
    finally:
        env.close()


def build_tiny_agent(
    env_id: str,
    output_dir: str | Path,
    *,
    env_kwargs: dict | None = None,
    num_tasks: int = 100,
    vocab_size: int = 1024,
    action_tokens: bool = False,
    word_pieces: bool = False,
    pretrain_steps: int = 0,
    pretrain_learning_rate: float = 3e-3,
    pretrain_copy_fraction: float = 0.0,
    **model_kwargs: int | bool,
) -> Path:
    """Build and save a tokenizer trained on ``env_id``'s text plus a randomly initialised small Qwen2 model.

    With ``action_tokens`` every admissible action of the corpus is one token, so that a reply is one token and
    reading an action off the admissible list is a single copy: a 2-layer agent otherwise learns to sequence the
    words of an action, and RL can break that sequencing (measured on coin: a fifth of one agent's actions became a
    bare ``"move"``). On the quickstart its warm starts reached test success 0.67-0.82 (0.42-0.84 without it, over the
    recorded runs) and 20 RL steps did not improve them, so the quickstart leaves it off. ``word_pieces``: see
    :func:`build_tokenizer`; for environments whose replies copy names out of the observations (search, webshop).
    ``pretrain_steps`` > 0: :func:`pretrain_tiny_model` on the same corpus before saving (the loss history goes to
    ``pretrain_losses.json`` beside the model)."""
    texts, actions = _walk_gold_plans(env_id, env_kwargs, num_tasks, max_turns=30)
    tokenizer = build_tokenizer(
        texts, vocab_size=vocab_size, whole_phrases=actions if action_tokens else (), word_pieces=word_pieces
    )
    model = build_tiny_model(tokenizer, **model_kwargs)
    losses = None
    if pretrain_steps > 0:
        seed = int(model_kwargs.get("seed", 0))
        losses = pretrain_tiny_model(
            model,
            tokenizer,
            texts,
            steps=pretrain_steps,
            learning_rate=pretrain_learning_rate,
            copy_fraction=pretrain_copy_fraction,
            seed=seed,
        )
    path = save_tiny_agent(model, tokenizer, output_dir)
    if losses is not None:
        (path / "pretrain_losses.json").write_text(json.dumps([round(loss, 4) for loss in losses]))
    return path


@dataclass
class BuildTinyArguments:
    """``trl-empg build-tiny``: where to save the agent, and how large its tokenizer and model are."""

    output_dir: str = field(metadata={"help": "Where to save the model and tokenizer."})
    num_tasks: int = field(default=100, metadata={"help": "Train tasks whose gold plans form the tokenizer corpus."})
    vocab_size: int = field(default=1024, metadata={"help": "BPE vocabulary size (before action tokens)."})
    action_tokens: bool = field(
        default=False, metadata={"help": "Make every admissible action of the corpus a single token."}
    )
    word_pieces: bool = field(
        default=False,
        metadata={
            "help": "BPE merges only inside a word (never a space or punctuation), so a copied name keeps its tokens."
        },
    )
    pretrain_steps: int = field(
        default=0,
        metadata={"help": "Next-token pretraining steps on the corpus before saving (16 blocks of 256 tokens each)."},
    )
    pretrain_learning_rate: float = field(default=3e-3, metadata={"help": "Peak learning rate of the pretraining."})
    pretrain_copy_fraction: float = field(
        default=0.0, metadata={"help": "Share of each pretraining batch that is copy drills (repeated random spans)."}
    )
    hidden_size: int = field(default=64, metadata={"help": "Model width (the MLP is twice as wide)."})
    num_hidden_layers: int = field(default=2, metadata={"help": "Model depth."})
    seed: int = field(default=0, metadata={"help": "Initialisation seed."})


def main(argv: Sequence[str] | None = None, prog: str = "python -m trl_empg.workflows.tiny") -> Path:
    """``trl-empg build-tiny --env_id twx:coin --output_dir DIR`` (flags or ``--config file.yaml``)."""
    from ..training.recipe import parse_command

    args, env = parse_command(
        (BuildTinyArguments, EnvArguments), argv, prog=prog, description=build_tiny_agent.__doc__
    )
    if env.env_id is None:
        raise ValueError("build-tiny needs --env_id: the environment whose text trains the tokenizer, e.g. twx:coin.")
    path = build_tiny_agent(
        env.env_id,
        args.output_dir,
        env_kwargs=env.env_kwargs,
        num_tasks=args.num_tasks,
        vocab_size=args.vocab_size,
        action_tokens=args.action_tokens,
        word_pieces=args.word_pieces,
        pretrain_steps=args.pretrain_steps,
        pretrain_learning_rate=args.pretrain_learning_rate,
        pretrain_copy_fraction=args.pretrain_copy_fraction,
        hidden_size=args.hidden_size,
        intermediate_size=2 * args.hidden_size,
        num_hidden_layers=args.num_hidden_layers,
        seed=args.seed,
    )
    print(f"Saved a tiny agent for {env.env_id} to {path}")
    return path


if __name__ == "__main__":
    main()
