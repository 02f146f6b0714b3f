"""What the agent sees and says: prompt texts, the chat template's token-exact rendering, action parsing.

Kept in one module so that training, evaluation, the warm start and the demo Space show the agent exactly the same
words and read its replies the same way; a subclass of :class:`AgentPrompts` changes the wording everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from .settings import PROMPT_STYLES, check_choice

__all__ = ["AgentPrompts", "ChatFormat", "parse_action", "render_chat"]

_ACTION_RE = re.compile(r"<action>(.*?)</action>", re.DOTALL)


class AgentPrompts:
    """The texts the agent sees: system prompt, first user message, observation turns and format-error feedback.

    Kept in one small class so the trainer, evaluation and the demo Space show the agent exactly the same words; a
    subclass can change the wording without touching the runner.
    """

    def __init__(self, style: str = "react", show_admissible_actions: bool = True, task_description: str = "") -> None:
        check_choice("prompt_style", style, PROMPT_STYLES)
        self.style = style
        self.show_admissible_actions = show_admissible_actions
        self.task_description = task_description.strip()

    def system(self) -> str:
        """The system prompt: the task family and the reply format the parser expects."""
        task = f" {self.task_description}" if self.task_description else ""
        intro = f"You are an agent playing a text-based game.{task} Each turn you see an observation."
        if self.style == "react":
            return (
                f"{intro} First reason about what to do inside <think>...</think>, then give exactly one action "
                "inside <action>...</action>, e.g. <think>your reasoning</think><action>your action</action>."
            )
        return f"{intro} Reply with exactly one action and nothing else."

    def expected_format(self) -> str:
        """One sentence saying what a well-formed reply looks like, repeated when the agent gets it wrong."""
        if self.style == "react":
            return "Reason inside <think>...</think>, then give exactly one action inside <action>...</action>."
        return "Reply with exactly one action and nothing else."

    def observation(self, observation: str, admissible_actions: Sequence[str]) -> str:
        """A user message carrying the environment's observation (and the admissible actions when shown)."""
        text = observation.strip()
        if self.show_admissible_actions and admissible_actions:
            text = f"{text}\n\nAdmissible actions: {', '.join(admissible_actions)}"
        return text

    def first_user(self, observation: str, admissible_actions: Sequence[str]) -> str:
        """The first user message: the task's initial observation."""
        return self.observation(observation, admissible_actions)

    def format_error(self, admissible_actions: Sequence[str]) -> str:
        """Feedback for a reply the parser could not read; it is not sent to the environment."""
        return self.observation(f"Invalid reply format. {self.expected_format()}", admissible_actions)

    def step_user(self, task: str, turn: int, history: Sequence[tuple[str, str]], current: str) -> str:
        """The one user message of a step-layout prompt at ``turn``: the task (the first user message), the last
        (observation, reply) pairs before this turn, oldest first, and the current observation.

        ``history[0]`` is the pair of turn ``turn - len(history)``; its observation is left out at turn 0 of the
        episode, where it is the task itself.
        """
        if turn == 0:
            return task
        parts = [task, f"You have played {turn} turn(s); your last {len(history)}:"]
        first = turn - len(history)
        for offset, (observation, reply) in enumerate(history):
            index = first + offset
            if index > 0:
                parts.append(f"[Turn {index}] Observation: {observation}")
            parts.append(f"[Turn {index}] Your reply: {reply}")
        parts.append(f"Current observation (turn {turn}):\n{current}")
        return "\n\n".join(parts)


def parse_action(text: str, style: str, end_token: str = "<|im_end|>") -> str | None:
    """The action in a model reply, or None when the reply is malformed.

    ReAct: the content of the last ``<action>...</action>`` (the model may revise itself while reasoning); plain: the
    whole reply. Both are stripped of ``end_token`` and whitespace; an empty action is malformed.
    """
    check_choice("prompt_style", style, PROMPT_STYLES)
    text = text.replace(end_token, "") if end_token else text
    if style == "react":
        matches = _ACTION_RE.findall(text)
        action = matches[-1].strip() if matches else ""
    else:
        action = text.strip()
    return action or None


class ChatFormat:
    """The chat template's token-exact rendering of an episode, for one tokenizer: the one place that knows how a
    conversation becomes the ids the model sees, for the rollout, the warm start and evaluation alike.

    Works with any template that is prefix-preserving (one more message never changes the tokens before it) and ends
    an assistant turn with the tokenizer's EOS token (ChatML's ``<|im_end|>``, Llama 3's ``<|eot_id|>``, ...):

    - :meth:`render`: the template's ids of a conversation. A template that refuses a system message (it raises) or
      silently drops it gets the system prompt folded into the first user message, so the agent still sees it.
    - :meth:`observation`: an observation turn, as appended after the model's EOS. Same method as TRL's tool-result
      suffix: render a dummy conversation with and without the extra user message plus the generation header, trim
      the shorter one at its last EOS (templates may put a newline after EOS) and take the difference.
    - :attr:`end_of_turn`: what the template puts after an assistant reply's content up to and including the EOS
      (usually the EOS alone), which closes a reply that was cut before the model said it.

    The dummy prefix is rendered once; each observation costs one template rendering.
    """

    _DUMMY = [
        {"role": "system", "content": "dummy"},
        {"role": "user", "content": "dummy"},
        {"role": "assistant", "content": "dummy"},
    ]
    #: A system prompt whose text must appear in the rendering if the template shows system messages.
    _SYSTEM_PROBE = "system-probe-7f3a"

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.eos = tokenizer.eos_token_id
        if self.eos is None:
            raise ValueError("The tokenizer has no EOS token; multi-turn rollouts need it to end the model's turns.")
        self.folds_system = not self._shows_system()
        rendered = self.render(self._DUMMY, add_generation_prompt=False)
        eos_positions = [i for i, token in enumerate(rendered) if token == self.eos]
        if not eos_positions:
            raise ValueError(
                "The chat template does not end an assistant turn with the tokenizer's EOS token "
                f"({tokenizer.eos_token!r}); multi-turn rollouts need it to separate the model's turns."
            )
        self.prefix = rendered[: eos_positions[-1] + 1]
        self.end_of_turn = self._end_of_turn()
        self.observation("probe")  # Fail before any episode starts if the template cannot be extended this way.

    def _shows_system(self) -> bool:
        from jinja2.exceptions import TemplateError

        probe = [{"role": "system", "content": self._SYSTEM_PROBE}, {"role": "user", "content": "dummy"}]
        try:
            text = self.tokenizer.apply_chat_template(probe, add_generation_prompt=True, tokenize=False)
        except TemplateError:  # raise_exception('System role not supported'), as Gemma's templates do
            return False
        return self._SYSTEM_PROBE in text

    def _end_of_turn(self) -> list[int]:
        """The tokens after the dummy reply's content in :attr:`prefix` (which ends with the EOS)."""
        header = self.render(self._DUMMY[:2], add_generation_prompt=True)
        if self.prefix[: len(header)] != header:
            raise ValueError(
                "The chat template is not prefix-preserving: its generation prompt is not the start of its rendering "
                "of an assistant reply, so the model's replies cannot be appended to the prompt token-exactly."
            )
        turn = self.prefix[len(header) :]
        content = self._DUMMY[-1]["content"]
        # The shortest tail after which the reply's tokens decode to exactly its content.
        for split in range(len(turn) - 1, -1, -1):
            if self.tokenizer.decode(turn[:split], skip_special_tokens=False) == content:
                return turn[split:]
        raise ValueError("Could not find where the chat template ends an assistant reply's content.")

    def messages(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        """``messages`` as the template is given them: with the system prompt folded into the first user message
        when the template cannot show a system message (:attr:`folds_system`), else unchanged."""
        if not (self.folds_system and messages and messages[0]["role"] == "system"):
            return messages
        system, rest = messages[0]["content"], messages[1:]
        if rest and rest[0]["role"] == "user":
            return [{"role": "user", "content": f"{system}\n\n{rest[0]['content']}"}, *rest[1:]]
        return [{"role": "user", "content": system}, *rest]

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
        """The chat template's token ids of ``messages`` (system prompt folded where the template needs it)."""
        return render_chat(self.tokenizer, self.messages(messages), add_generation_prompt)

    def observation(self, content: str) -> list[int]:
        """Token ids of a user message with ``content`` and the next generation header, as the template renders
        them after an assistant turn that ended with EOS."""
        full = self.render([*self._DUMMY, {"role": "user", "content": content}], add_generation_prompt=True)
        if full[: len(self.prefix)] != self.prefix:
            raise ValueError(
                "The chat template is not prefix-preserving: rendering a conversation with one more user message "
                "changes the tokens before it, so observation turns cannot be appended to the model's tokens."
            )
        suffix = full[len(self.prefix) :]
        if not suffix:
            raise ValueError("The chat template rendered an observation turn into no tokens.")
        return suffix


def render_chat(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
    """The chat template's token ids of ``messages``, exactly as given (see :meth:`ChatFormat.render`)."""
    return list(
        tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=False
        )
    )
