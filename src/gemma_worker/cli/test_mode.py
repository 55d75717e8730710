"""``--mode test``: load the model, run one short generation, print text and figures."""

from __future__ import annotations

import sys
import time

from gemma_worker.cli.loading import load_engine, sampling_params
from gemma_worker.cli.progress import Progress
from gemma_worker.core.conversation import Conversation
from gemma_worker.core.request import ExecuteRequest
from gemma_worker.engine.job import GenerationSpec
from gemma_worker.engine.messages import Failed, Finished, Text
from gemma_worker.settings import Settings

DEFAULT_PROMPT = "Question: What is the capital of France?\nAnswer:"


async def run_test(settings: Settings, prompt: str, max_tokens: int) -> int:
    """Exit status 0 when a generation produced text."""
    progress = Progress(3)
    engine, load_s = await load_engine(settings, progress)
    try:
        req = ExecuteRequest(input=prompt, max_tokens=max_tokens, temperature=0.0)
        params = sampling_params(settings, engine, req)
        conv = Conversation(prompt, engine.renderer.default_format)
        handle = engine.submit(GenerationSpec("cli-test", conv, params))
        out = sys.stdout
        out.write(f"[3/3] generating ({max_tokens} tokens max)\n--- prompt ---\n{prompt}\n")
        out.write("--- output ---\n")
        t0 = time.perf_counter()
        first: float | None = None
        text = ""
        async for event in handle.events():
            if isinstance(event, Text):
                first = first or time.perf_counter()
                text += event.text
                out.write(event.text)
                out.flush()
            elif isinstance(event, Failed):
                print(f"\nerror: {event.error.message}", file=sys.stderr)
                return 1
            elif isinstance(event, Finished):
                out.write("\n--- figures ---\n")
                ttft = (first - t0) * 1e3 if first else float("nan")
                tps = event.timings.tokens_per_second or 0.0
                out.write(
                    f"load time: {load_s * 1e3:.0f} ms\n"
                    f"time to first token: {ttft:.1f} ms\n"
                    f"tokens/s: {tps:.1f}\n"
                    f"tokens: {event.usage.prompt_tokens} prompt, "
                    f"{event.usage.completion_tokens} generated"
                    f" (finish: {event.finish_reason})\n"
                )
        if not text.strip():
            print("error: the model generated no text", file=sys.stderr)
            return 1
        return 0
    finally:
        await engine.close()
