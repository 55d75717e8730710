import pytest

from gemma_worker.core.errors import ErrorCode, WorkerError
from gemma_worker.engine.prompt import PromptRenderer

GEMMA_LIKE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def test_plain_by_default_for_a_base_model() -> None:
    p = PromptRenderer(None).render("Question: hi\nAnswer:")
    assert p.text == "Question: hi\nAnswer:"
    assert p.add_special and not p.parse_special


def test_auto_uses_the_template_for_an_instruction_tuned_model() -> None:
    p = PromptRenderer(GEMMA_LIKE, prefer_chat=True).render("hi")
    assert p.format == "chat"
    assert p.text == "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"
    assert p.parse_special and not p.add_special


def test_plain_can_be_forced() -> None:
    assert PromptRenderer(GEMMA_LIKE, prefer_chat=True).render("hi", "plain").text == "hi"


def test_chat_without_template_is_invalid_request() -> None:
    with pytest.raises(WorkerError) as info:
        PromptRenderer(None).render("hi", "chat")
    assert info.value.code is ErrorCode.INVALID_REQUEST


def test_template_is_sandboxed() -> None:
    evil = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(WorkerError) as info:
        PromptRenderer(evil, prefer_chat=True).render("hi")
    assert info.value.code is ErrorCode.INFERENCE_ERROR


def test_template_raise_exception_is_an_inference_error() -> None:
    with pytest.raises(WorkerError):
        PromptRenderer("{{ raise_exception('no system role') }}").render("hi", "chat")
