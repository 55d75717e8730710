"""Prompt formatting: plain completion or the model's chat template (sandboxed Jinja)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.core.request import PromptFormat


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
    format: PromptFormat


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
    ) -> None:
        self._env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, autoescape=False
        )
        self._env.globals["raise_exception"] = _raise_exception
        self._env.globals["strftime_now"] = _strftime_now
        self._bos = bos_token
        self._eos = eos_token
        self._prefer_chat = prefer_chat and chat_template is not None
        self._template = None if chat_template is None else self._env.from_string(chat_template)

    @property
    def has_chat_template(self) -> bool:
        """Whether the model ships a chat template."""
        return self._template is not None

    @property
    def default_format(self) -> PromptFormat:
        """What ``auto`` resolves to for this model."""
        return "chat" if self._prefer_chat else "plain"

    def render(self, text: str, fmt: PromptFormat = "auto") -> Prompt:
        """Build the prompt for ``text``; ``INVALID_REQUEST`` if ``chat`` is asked of a model
        without a template, ``INFERENCE_ERROR`` if the template fails."""
        chosen = self.default_format if fmt == "auto" else fmt
        if chosen == "plain":
            return Prompt(text, add_special=True, parse_special=False, format="plain")
        return self.chat_prompt([{"role": "user", "content": text}])

    def chat_prompt(self, messages: list[dict[str, Any]]) -> Prompt:
        """A chat-template prompt for a whole conversation."""
        return Prompt(
            self.render_messages(messages), add_special=False, parse_special=True, format="chat"
        )

    def render_messages(self, messages: list[dict[str, Any]]) -> str:
        """Render ``messages`` through the chat template, ending with the generation prompt."""
        if self._template is None:
            raise WorkerError(
                ErrorCode.INVALID_REQUEST,
                "this model has no chat template; use prompt_format plain",
            )
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
