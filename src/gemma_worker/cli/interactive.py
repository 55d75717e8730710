"""``--mode interactive``: a terminal chat that streams tokens as they come.

Multi-turn within the run; ``/exit`` (or end of input) quits; Ctrl-C interrupts the current
answer, not the program.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

from gemma_worker.cli.loading import load_engine
from gemma_worker.cli.progress import Progress
from gemma_worker.core.request import GenerationRequest
from gemma_worker.engine.job import GenerationHandle
from gemma_worker.engine.messages import Failed, Finished, Text
from gemma_worker.engine.prompt import Prompt
from gemma_worker.engine.protocol import Engine
from gemma_worker.settings import Settings

_USER = "User"
_ASSISTANT = "Assistant"


class Conversation:
    """The turns so far, rendered with the chat template or as a plain transcript."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.turns: list[dict[str, Any]] = []
        self.chat = engine.renderer.default_format == "chat"

    def prompt(self, user_text: str) -> Prompt:
        """The prompt for the next answer."""
        messages = [*self.turns, {"role": "user", "content": user_text}]
        if self.chat:
            return self.engine.renderer.chat_prompt(messages)
        lines = [
            f"{_USER if m['role'] == 'user' else _ASSISTANT}: {m['content']}" for m in messages
        ]
        text = "\n".join(lines) + f"\n{_ASSISTANT}:"
        return Prompt(text, add_special=True, parse_special=False, format="plain")

    @property
    def stop(self) -> list[str]:
        """Stop strings that end a plain-transcript answer."""
        return [] if self.chat else [f"\n{_USER}:", "\n\n"]

    def add(self, user_text: str, answer: str) -> None:
        """Record a finished exchange."""
        self.turns.append({"role": "user", "content": user_text})
        self.turns.append({"role": "assistant", "content": answer.strip()})


async def run_interactive(settings: Settings) -> int:
    """Chat until ``/exit`` or end of input."""
    engine, _ = await load_engine(settings, Progress(2))
    loop = asyncio.get_running_loop()
    current: list[GenerationHandle] = []

    def on_sigint() -> None:
        if current:
            current[0].cancel()
        else:
            sys.stdout.write("\n(type /exit to quit)\n> ")
            sys.stdout.flush()

    loop.add_signal_handler(signal.SIGINT, on_sigint)
    conv = Conversation(engine)
    print("Gemma worker chat. /exit quits; Ctrl-C stops an answer.")
    try:
        while True:
            try:
                line = await asyncio.to_thread(input, "> ")
            except EOFError:
                print()
                return 0
            line = line.strip()
            if not line:
                continue
            if line in {"/exit", "/quit"}:
                return 0
            req = GenerationRequest(input=line, stop=conv.stop or None)
            handle = engine.submit(
                conv.prompt(line), settings.request_limits().resolve(req), "cli-chat"
            )
            current[:] = [handle]
            answer = ""
            async for event in handle.events():
                if isinstance(event, Text):
                    answer += event.text
                    sys.stdout.write(event.text)
                    sys.stdout.flush()
                elif isinstance(event, Failed):
                    sys.stdout.write(f"\n[error: {event.error.message}]")
                elif isinstance(event, Finished) and event.finish_reason == "cancelled":
                    sys.stdout.write(" [interrupted]")
            current.clear()
            sys.stdout.write("\n")
            conv.add(line, answer)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        await engine.close()
