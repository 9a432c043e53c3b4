"""What a sampled request leaves for scoring: its prompt, the variant that served it, and the
answer's bytes exactly as they went to the client.

Nothing here changes the answer or delays it: a stream's chunks are copied as they pass (a list
append), and the copy is handed to the scoring queue by a background task that Starlette runs
once the last byte has been sent. Parsing the answer waits for the scoring worker.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask

from server.inference.protocol import ChatCompletionRequest, CompletionRequest, InferenceRequest


@dataclass
class Answer:
    """A sampled request and, once answered, what the client got."""

    request: InferenceRequest
    served: str = ""  # the backend's name
    stream: bool = False
    chunks: list[bytes] = field(default_factory=list)  # the body, as sent

    @property
    def chat(self) -> bool:
        return isinstance(self.request, ChatCompletionRequest)


def scorable(request: InferenceRequest) -> bool:
    """Requests whose answer can be read back teacher-forced: chat, or one text completion of
    one prompt (a string or token ids) that does not echo it."""
    if isinstance(request, ChatCompletionRequest):
        return True
    if not isinstance(request, CompletionRequest) or request.echo:
        return False
    prompt = request.prompt
    return isinstance(prompt, str) or all(isinstance(t, int) for t in prompt)


class Tee:
    """A stream's body iterator that keeps a copy of every chunk it yields; closing it closes
    the one it wraps (the relay, which finishes the request's lease when closed)."""

    def __init__(self, inner: AsyncIterator[bytes], copy: list[bytes]) -> None:
        self._inner = inner
        self._copy = copy

    def __aiter__(self) -> Tee:
        return self

    async def __anext__(self) -> bytes:
        chunk = await anext(self._inner)
        self._copy.append(chunk)
        return chunk

    async def aclose(self) -> None:
        close = getattr(self._inner, "aclose", None)
        if close is not None:
            await close()


def follow(
    answer: Answer, served: str, response: Response, submit: Callable[[Answer], None]
) -> None:
    """Copy `response`'s body into `answer` as it is sent, and `submit` the answer once it
    has been sent (Starlette runs a response's background task after its last byte)."""
    answer.served = served

    async def sent() -> None:  # async: a plain function would cost a thread-pool hop
        submit(answer)

    if isinstance(response, StreamingResponse):
        answer.stream = True
        response.body_iterator = Tee(response.body_iterator, answer.chunks)
    else:
        answer.chunks.append(bytes(response.body))
    response.background = BackgroundTask(sent)


def answer_text(answer: Answer) -> str | None:
    """Choice 0's whole text as the client got it; None when it did not finish (an error
    mid-stream, a client that left) or has no text."""
    body = b"".join(answer.chunks)
    try:
        if answer.stream:
            return _streamed_text(body, answer.chat)
        choice = (json.loads(body).get("choices") or [None])[0] or {}
    except (ValueError, AttributeError, TypeError):
        return None
    text = (choice.get("message") or {}).get("content") if answer.chat else choice.get("text")
    return text if isinstance(text, str) and text and choice.get("finish_reason") else None


def _streamed_text(body: bytes, chat: bool) -> str | None:
    parts, finished = [], False
    for event in body.split(b"\n\n"):
        if not event.startswith(b"data: {"):
            continue  # [DONE], or the empty rest
        chunk = json.loads(event[len(b"data: ") :])
        if "error" in chunk:
            return None
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            piece = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
            if isinstance(piece, str):
                parts.append(piece)
            finished = finished or bool(choice.get("finish_reason"))
    text = "".join(parts)
    return text if text and finished else None
