"""A closed load generator that counts what it received, for checking the gateway's counters.

Each request is one of six kinds: chat or completions, times non-streaming, streaming with
`include_usage`, and streaming without it. Every request asks for a known `max_tokens` with
`ignore_eos` (a vLLM extension), so each generates exactly `max_tokens` tokens. Generated
tokens are counted from the response's usage where the response carries one (non-streaming, and
streaming with include_usage), and checked against max_tokens there; a stream without usage
counts max_tokens after checking that it ended with finish_reason "length" and [DONE].
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field

import httpx

from bench.loadgen import PROMPTS

KINDS = [
    (route, stream, usage)
    for route in ("chat", "completions")
    for stream, usage in ((False, None), (True, True), (True, False))
]
PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


@dataclass
class Tally:
    """What the client received, by gateway route and HTTP status."""

    requests: Counter = field(default_factory=Counter)  # (route, status) -> count
    generated_tokens: int = 0
    arms: Counter = field(default_factory=Counter)  # (experiment, arm) -> count
    problems: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.requests.values())


def body_for(i: int, model: str, max_tokens: int) -> tuple[str, dict]:
    route, stream, include_usage = KINDS[i % len(KINDS)]
    prompt = PROMPTS[i % len(PROMPTS)]
    body: dict = {
        "model": model,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0.7,
        "seed": i,
    }
    if route == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": include_usage}
    return route, body


async def _one(client: httpx.AsyncClient, url: str, route: str, body: dict, tally: Tally) -> None:
    want = body["max_tokens"]
    tokens, status, headers = None, None, {}
    if not body.get("stream"):
        response = await client.post(f"{url}{PATHS[route]}", json=body)
        status, headers = response.status_code, response.headers
        if status == 200:
            tokens = response.json()["usage"]["completion_tokens"]
    else:
        finish, done, usage = None, False, None
        async with client.stream("POST", f"{url}{PATHS[route]}", json=body) as response:
            status, headers = response.status_code, response.headers
            async for line in response.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    for choice in chunk.get("choices") or []:
                        finish = choice.get("finish_reason") or finish
        if status == 200:
            if body["stream_options"]["include_usage"]:
                tokens = usage["completion_tokens"] if usage else None
            elif usage is not None:
                tally.problems.append(f"usage sent though not asked for: {body}")
            elif finish == "length" and done:
                tokens = want  # ignore_eos: exactly max_tokens, and it stopped for length
            else:
                tally.problems.append(f"stream ended with {finish}, [DONE] {done}: {body}")
    tally.requests[(route, str(status))] += 1
    if status != 200:
        return
    if tokens != want:
        tally.problems.append(f"{tokens} tokens, asked for {want} with ignore_eos: {body}")
    tally.generated_tokens += tokens or 0
    if experiment := headers.get("x-leanserve-experiment"):
        tally.arms[tuple(experiment.split("/", 1))] += 1


async def run_mixed(
    url: str, model: str, requests: int, concurrency: int = 4, max_tokens: int = 24
) -> Tally:
    """`requests` requests, `concurrency` at a time; request i asks for 4 + i % max_tokens."""
    tally = Tally()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    async with httpx.AsyncClient(timeout=120) as client:

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                route, body = body_for(i, model, 4 + i % max_tokens)
                await _one(client, url, route, body, tally)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tally


def mixed_load(url: str, model: str, requests: int, concurrency: int = 4) -> Tally:
    return asyncio.run(run_mixed(url, model, requests, concurrency))
