"""Request validation, without any engine."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from server.inference.protocol import ChatCompletionRequest, CompletionRequest

MSG = [{"role": "user", "content": "hi"}]


def test_allowed_extensions_pass_through_to_the_engine():
    request = ChatCompletionRequest.model_validate({"model": "m", "messages": MSG, "top_k": 5})
    assert request.model_dump(exclude_unset=True)["top_k"] == 5


@pytest.mark.parametrize("field", ["chat_template", "kv_transfer_params", "some_sdk_field"])
def test_fields_outside_the_allow_list_are_refused(field):
    with pytest.raises(ValidationError, match=field):
        ChatCompletionRequest.model_validate({"model": "m", "messages": MSG, field: 1})


def test_unset_fields_are_not_sent():
    request = ChatCompletionRequest.model_validate({"model": "m", "messages": MSG})
    assert set(request.model_dump(exclude_unset=True)) == {"model", "messages"}


@pytest.mark.parametrize(
    "fields",
    [
        {"max_tokens": "5"},  # strings are not numbers
        {"max_tokens": 0},
        {"temperature": 2.01},
        {"top_p": 0},
        {"n": 0},
        {"stream": 1},
        {"messages": [{"role": "narrator", "content": "x"}]},
        {"messages": []},
    ],
)
def test_invalid_chat_requests(fields):
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({"model": "m", "messages": MSG, **fields})


@pytest.mark.parametrize("prompt", ["", [], [""], [[]]])
def test_empty_prompts(prompt):
    with pytest.raises(ValidationError):
        CompletionRequest.model_validate({"model": "m", "prompt": prompt})


@pytest.mark.parametrize("prompt", ["hello", ["a", "b"], [1, 2, 3], [[1, 2], [3]]])
def test_prompt_forms(prompt):
    assert CompletionRequest.model_validate({"model": "m", "prompt": prompt}).prompt == prompt


def test_integer_temperature_is_a_number():
    assert (
        ChatCompletionRequest.model_validate(
            {"model": "m", "messages": MSG, "temperature": 1}
        ).temperature
        == 1.0
    )
