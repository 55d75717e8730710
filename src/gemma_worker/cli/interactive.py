"""``--mode interactive``: a terminal chat that streams tokens as they come.

Multi-turn within the run; ``/exit`` (or end of input) quits; Ctrl-C interrupts the current
answer, not the program.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import uuid

from gemma_worker.cli.loading import load_engine, sampling_params
from gemma_worker.cli.progress import Progress
from gemma_worker.core.conversation import Conversation, ConversationFormat, Turn
from gemma_worker.core.request import ExecuteRequest
from gemma_worker.engine.interface import Engine
from gemma_worker.engine.job import GenerationHandle, GenerationSpec
from gemma_worker.engine.messages import Failed, Finished, Text
from gemma_worker.settings import Settings

_USER = "User"
_ASSISTANT = "Assistant"


class Chat:
    """The turns so far: chat turns for an instruction-tuned model, else a plain transcript
    (``User: ...`` / ``Assistant: ...`` lines)."""

    def __init__(self, engine: Engine) -> None:
        self.format: ConversationFormat = engine.renderer.default_format
        self.turns: list[Turn] = []
        #: The engine keeps this chat's KV cache between answers.
        self.key = f"cli-chat-{uuid.uuid4()}"

    def user_text(self, line: str) -> str:
        """What the model is given for the user's ``line``."""
        if self.format == "chat":
            return line
        lead = "\n" if self.turns else ""
        return f"{lead}{_USER}: {line}\n{_ASSISTANT}:"

    def conversation(self, line: str) -> Conversation:
        """The conversation for the next answer."""
        return Conversation(self.user_text(line), self.format, tuple(self.turns))

    @property
    def stop(self) -> list[str]:
        """Stop strings that end a plain-transcript answer."""
        return [] if self.format == "chat" else [f"\n{_USER}:", "\n\n"]

    def add(self, line: str, answer: str) -> None:
        """Record a finished exchange."""
        self.turns.append(Turn(self.user_text(line), answer))


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
    chat = Chat(engine)
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
            req = ExecuteRequest(input=line, stop=chat.stop or None)
            params = sampling_params(settings, engine, req)
            handle = engine.submit(
                GenerationSpec("cli-chat", chat.conversation(line), params, session=chat.key)
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
            chat.add(line, answer)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        await engine.close()
