"""Preparing a request on a vocabulary thread: render its conversation (the one renderer,
:class:`~gemma_worker.engine.prompt.PromptRenderer`), leave out the oldest turns that do not
fit when the request allows it, tokenize, and work out what the engine thread will need of
the prompt (its bytes, its token boundaries). It only reads the vocabulary."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

from gemma_worker.core.conversation import Conversation, turns_to_drop
from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.core.prefix import token_boundaries
from gemma_worker.core.speculation import NgramDrafter
from gemma_worker.engine.job import GenerationSpec, Job
from gemma_worker.engine.llama import LlamaModel
from gemma_worker.engine.messages import Trimmed
from gemma_worker.engine.prompt import Prompt, PromptRenderer
from gemma_worker.engine.prompt_tokens import SessionTokens, Tokenized


@dataclass(eq=False)
class Prepared:
    """An accepted job with its rendered, tokenised prompt."""

    job: Job
    prompt: Prompt
    tokens: list[int]
    #: Byte offsets of the prompt text where its tokens break, each with the number of tokens
    #: before it.
    boundaries: dict[int, int]
    #: The prompt's n-gram index for speculation (``None``: the request does not speculate).
    drafter: NgramDrafter | None = None

    @functools.cached_property
    def text(self) -> bytes:
        """The prompt text as UTF-8 (encoded once: every cached slot's match reads it)."""
        return self.prompt.text.encode("utf-8")


def least_answer(spec: GenerationSpec) -> int:
    """The fewest tokens a request's answer needs room for: one, or its grammar's minimum."""
    return max(1, 0 if spec.grammar is None else spec.grammar.min_tokens)


def prepare(
    job: Job,
    model: LlamaModel,
    renderer: PromptRenderer,
    prompt_tokens: SessionTokens,
    max_input_tokens: int | None,
    *,
    speculation: bool = False,
) -> Prepared:
    """Render and tokenise the prompt, leaving out the oldest turns of a conversation if its
    history does not fit; ``CONTEXT_OVERFLOW`` when even the new input alone does not.
    Runs on a vocabulary thread; what the engine thread will need of the prompt (its
    bytes, its token boundaries, with ``speculation`` its n-gram index) is worked out here
    too."""
    source = job.spec.prompt
    limit = max_input_tokens
    if limit is not None:
        text = source.input if isinstance(source, Conversation) else source.text
        n_input = len(model.tokenize(text, add_special=False, parse_special=False))
        if n_input > limit:
            raise WorkerError(
                ErrorCode.INVALID_REQUEST,
                f"input is {n_input} tokens; the limit is {limit}",
                n_input_tokens=n_input,
                max_input_tokens=limit,
            )
    n_ctx = model.n_ctx_seq
    params = job.params
    # A request that fits its answer to the context needs room for one token at least,
    # or for the shortest answer its grammar allows.
    answer = least_answer(job.spec) if params.fit_context else params.max_tokens
    budget = n_ctx - answer
    built: dict[int, tuple[Prompt, list[int], Tokenized]] = {}
    session = job.spec.session

    def build(drop: int) -> tuple[Prompt, list[int], Tokenized]:
        if drop not in built:
            prompt = (
                renderer.render(source.without_oldest(drop))
                if isinstance(source, Conversation)
                else source
            )
            tokenized = prompt_tokens.tokenize(  # a session's turn: its new text only
                session,
                prompt.text,
                add_special=prompt.add_special,
                parse_special=prompt.parse_special,
            )
            built[drop] = (prompt, tokenized.tokens.tolist(), tokenized)
        return built[drop]

    n_history = (
        len(source.history) if isinstance(source, Conversation) and job.spec.trim_history else 0
    )
    drop = turns_to_drop(n_history, lambda d: len(build(d)[1]) <= budget)
    if drop is None:
        n_prompt = len(build(n_history)[1])
        what = "the input alone" if n_history else "prompt"
        raise WorkerError(
            ErrorCode.CONTEXT_OVERFLOW,
            f"{what} ({n_prompt} tokens) + "
            + (
                f"the answer (at least {answer})"
                if params.fit_context
                else f"max_tokens ({answer})"
            )
            + f" exceeds the context of {n_ctx} tokens",
            n_prompt_tokens=n_prompt,
            max_tokens=params.max_tokens,
            min_answer_tokens=answer,
            n_ctx=n_ctx,
        )
    if drop:
        job.channel.put(Trimmed(dropped_turns=drop, kept_turns=n_history - drop))
    prompt, tokens, tokenized = build(drop)
    prompt_tokens.remember(session, tokenized)
    job.parse_special = prompt.parse_special
    if params.fit_context:
        job.params = dataclasses.replace(
            params, max_tokens=min(params.max_tokens, n_ctx - len(tokens))
        )
    head = model.bos_head if prompt.add_special else []
    prepared = Prepared(
        job,
        prompt,
        tokens,
        token_boundaries(tokens, len(head), model.special_piece),
        NgramDrafter(tokens) if speculation else None,
    )
    _ = prepared.text  # encoded here, once
    return prepared
