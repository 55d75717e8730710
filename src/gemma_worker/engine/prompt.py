"""Prompt formatting: plain completion or the model's chat template (sandboxed Jinja)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from gemma_worker.core.conversation import Conversation, ConversationFormat, PromptFormat, Turn
from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.core.special import SpecialTextEscaper


@dataclass(frozen=True, slots=True)
class Prompt:
    """Text for the tokenizer and how to tokenize it.

    Plain prompts get the model's BOS added and never parse special tokens out of user text;
    a rendered chat template already carries its special tokens (BOS included), so they are
    parsed and none is added.
    """

    text: str
    add_special: bool
    parse_special: bool
    format: ConversationFormat


_GEMMA_TURN = "<start_of_turn>{role}\n{content}<end_of_turn>\n"


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now(UTC).strftime(fmt)


class PromptRenderer:
    """Renders a request's input as a plain prompt or through the GGUF's chat template.

    ``auto`` picks the chat template only when the model is instruction-tuned (its template
    exists and ``prefer_chat`` is true); the embedded base model therefore gets plain completion.
    """

    def __init__(
        self,
        chat_template: str | None,
        *,
        bos_token: str = "<bos>",
        eos_token: str = "<eos>",
        prefer_chat: bool = False,
        special_tokens: Iterable[str] = (),
    ) -> None:
        self._env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, autoescape=False
        )
        self._env.globals["raise_exception"] = _raise_exception
        self._env.globals["strftime_now"] = _strftime_now
        self._escaper = SpecialTextEscaper(special_tokens)
        self._bos = bos_token
        self._eos = eos_token
        self._prefer_chat = prefer_chat and chat_template is not None
        self._template = None if chat_template is None else self._env.from_string(chat_template)
        self._template_source = chat_template

    @property
    def template_source(self) -> str | None:
        """The GGUF's chat template (Jinja), if it has one."""
        return self._template_source

    @property
    def has_chat_template(self) -> bool:
        """Whether the model ships a chat template."""
        return self._template is not None

    @property
    def default_format(self) -> ConversationFormat:
        """What ``auto`` resolves to for this model."""
        return "chat" if self._prefer_chat else "plain"

    def resolve(self, fmt: PromptFormat) -> ConversationFormat:
        """The concrete format for a request's ``prompt_format``."""
        return self.default_format if fmt == "auto" else fmt

    def render(self, conv: Conversation) -> Prompt:
        """The prompt for ``conv``: ``INFERENCE_ERROR`` if the chat template fails.

        A plain conversation is a running transcript: the system prompt (and a blank line),
        then each earlier input directly followed by its answer, then the new input. A chat
        conversation goes through the model's template, or Gemma's turn format when the model
        has none.
        """
        if conv.format == "plain":
            head = f"{conv.system}\n\n" if conv.system else ""
            body = "".join(t.user + t.assistant for t in conv.history)
            return Prompt(
                head + body + conv.input, add_special=True, parse_special=False, format="plain"
            )
        conv = self._escaped(conv)
        messages: list[dict[str, Any]] = []
        if conv.system:
            messages.append({"role": "system", "content": conv.system})
        for turn in conv.history:
            messages.append({"role": "user", "content": turn.user})
            messages.append({"role": "assistant", "content": turn.assistant})
        messages.append({"role": "user", "content": conv.input})
        text = self.render_messages(messages) if self._template else self._gemma_turns(conv)
        return Prompt(text, add_special=False, parse_special=True, format="chat")

    def _escaped(self, conv: Conversation) -> Conversation:
        """``conv`` with special-token spellings in its texts broken up (chat prompts parse
        special tokens; client text must not be able to forge turns)."""
        esc = self._escaper.escape
        return Conversation(
            esc(conv.input),
            conv.format,
            tuple(Turn(esc(t.user), esc(t.assistant)) for t in conv.history),
            None if conv.system is None else esc(conv.system),
        )

    def _gemma_turns(self, conv: Conversation) -> str:
        """Gemma's turn format (what its instruction-tuned templates produce)."""
        parts = [self._bos]
        first = f"{conv.system.strip()}\n\n" if conv.system else ""
        for turn in conv.history:
            parts.append(_GEMMA_TURN.format(role="user", content=first + turn.user.strip()))
            parts.append(_GEMMA_TURN.format(role="model", content=turn.assistant.strip()))
            first = ""
        parts.append(_GEMMA_TURN.format(role="user", content=first + conv.input.strip()))
        parts.append("<start_of_turn>model\n")
        return "".join(parts)

    def render_messages(self, messages: list[dict[str, Any]]) -> str:
        """Render ``messages`` through the chat template, ending with the generation prompt."""
        assert self._template is not None
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=True,
                bos_token=self._bos,
                eos_token=self._eos,
            )
        except TemplateError as exc:
            raise WorkerError(
                ErrorCode.INFERENCE_ERROR, "the model's chat template could not be rendered"
            ) from exc
