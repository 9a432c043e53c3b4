"""Attacks on the gateway's own checks (issue 12), each an exact request against a gateway built
without engines: its only engine is an unreachable remote URL, so 503 means "passed every check
the gateway makes". Prints one line per attack; BENCHMARKS.md "Reliability" quotes the output.

    .venv/bin/python bench/security_attacks.py > bench/results/security_attacks_after.txt

The "before" file came from the same script run against the tree before the fixes
(`git archive 70c9529`); attacks whose settings did not exist yet print "setup refused".
Slow-client, stream-slot, /metrics and engine-key attacks need real sockets or engines: their
tests (tests/server/test_slow_clients.py, test_stream_admission.py, test_metrics_ready.py,
test_engine_key_e2e.py) are the record for those.
"""
# ruff: noqa: E501, E701, E702, E731

import asyncio
import json
import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fastapi.testclient import TestClient  # noqa: E402

from server.app import create_app  # noqa: E402
from server.settings import load_settings  # noqa: E402

BASE = "smollm2-135m-instruct"
CHAT = {"model": BASE, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def client(**over):
    tmp = Path(tempfile.mkdtemp())
    (tmp / "keys").write_text("k-1\n")
    auth = over.pop("auth", None)
    s = load_settings(
        home=tmp, variants=[], remote_engines={BASE: "http://127.0.0.1:9"}, auth=auth or {}, **over
    )
    return TestClient(create_app(s), raise_server_exceptions=False), tmp


def keyed(**over):
    tmp = Path(tempfile.mkdtemp())
    (tmp / "keys").write_text("k-1\n")
    s = load_settings(
        home=tmp,
        variants=[],
        remote_engines={BASE: "http://127.0.0.1:9"},
        auth={"api_keys_file": str(tmp / "keys"), "admin_key": "adm"},
        **over,
    )
    return TestClient(create_app(s), raise_server_exceptions=False)


def show(name, codes):
    print(f"{name}: {codes}")


def safe(name, f):
    try:
        show(name, f())
    except Exception as e:
        show(name, f"setup refused: {type(e).__name__}: {str(e).splitlines()[0][:100]}")


# 1
def a1():
    with keyed(limits={"requests_per_minute": 2}) as c:
        return [
            c.post("/v1/chat/completions", json=CHAT, headers={"Authorization": h}).status_code
            for h in ("bearer k-1", "BEARER k-1", "Bearer  k-1")
        ]


safe("1a rpm=2, 'bearer k-1','BEARER k-1','Bearer  k-1'", a1)


def a1b():
    c, _ = client(limits={"requests_per_minute": 2})
    with c:
        return [
            c.post(
                "/v1/chat/completions", json=CHAT, headers={"Authorization": f"junk-{i}"}
            ).status_code
            for i in range(3)
        ]


safe("1b keys off rpm=2, Authorization junk-0..2", a1b)


def a1c():
    with keyed(limits={"requests_per_minute": 2}) as c:
        return [
            c.post(
                "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer guess-{i}"}
            ).status_code
            for i in range(100)
        ][-3:]


safe("1c keys on rpm=2, 100 wrong keys (last 3 codes)", a1c)


def a1d():
    c, _ = client(limits={"requests_per_minute": 2})
    with c:
        return [
            c.post("/v1/feedback", json={"request_id": f"r{i}", "score": 1}).status_code
            for i in range(3)
        ]


safe("1d rpm=2, POST /v1/feedback x3", a1d)


# 2
def a2():
    c, _ = client(limits={"max_tokens": 16})
    with c:
        r1 = c.post(
            "/v1/chat/completions", json={**CHAT, "max_tokens": 64, "max_completion_tokens": 1}
        ).status_code
        r2 = c.post(
            "/v1/completions",
            json={"model": BASE, "prompt": "hi", "max_completion_tokens": 1, "max_tokens": 64},
        ).status_code
        return [r1, r2]


safe(
    "2 cap=16: chat {max_tokens:64,max_completion_tokens:1}; completions {max_completion_tokens:1,max_tokens:64}",
    a2,
)


# 3
def a3():
    c, _ = client()
    with c:
        return c.post(
            "/v1/completions", json={"model": BASE, "prompt": ["hi"] * 64, "n": 2, "max_tokens": 1}
        ).status_code


safe("3 completions 64 prompts x n=2 (max_n 8)", a3)


# 7
def a7():
    c, _ = client()
    out = {}
    with c:
        for f, v in [
            ("chat_template", "{{ x }}"),
            ("chat_template_kwargs", {"a": 1}),
            ("kv_transfer_params", {}),
            ("some_sdk_field", 1),
            ("logit_bias", {str(i): 1 for i in range(5000)}),
            ("stop", ["x"] * 1000),
            ("allowed_token_ids", list(range(20000))),
            ("prompt_logprobs", -1),
            ("response_format", {"type": "json_schema", "json_schema": {}}),
            ("structured_outputs", {"regex": "a*"}),
        ]:
            out[f] = c.post("/v1/chat/completions", json={**CHAT, f: v}).status_code
        out["prompt_embeds"] = c.post(
            "/v1/completions", json={"model": BASE, "prompt": "hi", "prompt_embeds": "AAAA"}
        ).status_code
    return out


safe("7 extra fields on chat", a7)


def a7b():
    from server.inference.service import upstream_error

    return len(
        upstream_error(400, json.dumps({"error": {"message": "x" * 100000}}).encode()).message
    )


safe("7 relayed engine error length (100k-char message)", a7b)


# 8
def a8():
    c, _ = client()
    with c:
        return [
            c.post("/v1/chat/completions", json={**CHAT, "leanserve_policy": v}).status_code
            for v in (5, ["x"])
        ]


safe("8 leanserve_policy 5, ['x']", a8)


# 9
def a9():
    records = []

    class H(logging.Handler):
        def emit(self, r):
            records.append(r)

    lg = logging.getLogger("leanserve.protocol")
    lg.addHandler(H())
    lg.setLevel(logging.DEBUG)
    c, _ = client()
    with c:
        fields = {f"f{i}" + "n" * 500: i for i in range(200)}
        c.post("/v1/chat/completions", json={**CHAT, **fields})
        c.post(
            "/v1/chat/completions",
            json={**CHAT, "messages": [{"role": "user", "content": "hi", **fields}]},
        )
    return [(logging.getLevelName(r.levelno), len(r.getMessage())) for r in records]


safe(
    "9 200 unknown 500-char field names (top level, then in a message): log records (level, length)",
    a9,
)


# 10
def a10():
    c, _ = client()
    with c:
        return c.post("/v1/feedback", json={"request_id": "r1", "score": 1e308}).status_code


safe("10 feedback score 1e308", a10)


# 11
def a11():
    c, _ = client(auth={"admin_key": "adm"})
    with c:
        return [
            c.post(
                "/v1/variants", json={"recipe": r}, headers={"Authorization": "Bearer adm"}
            ).status_code
            for r in ("w8a8\n", "config.yaml")
        ]


safe("11 POST /v1/variants recipe 'w8a8\\n', 'config.yaml'", a11)


# 14
def a14():
    with keyed() as c:
        return [c.get(p).status_code for p in ("/docs", "/openapi.json", "/redoc")]


safe("14 keys set, no key: /docs, /openapi.json, /redoc", a14)


def a14b():
    from server.variants.service import Variant

    with keyed() as c:
        c.app.state.leanserve.variants.variants["w8a8"] = Variant(
            "w8a8",
            f"{BASE}:w8a8",
            "w8a8",
            state="failed",
            error="see /srv/home/logs/build.log",
            path="/srv/home/variants/x",
        )
        return c.get("/v1/variants/w8a8", headers={"Authorization": "Bearer k-1"}).json()


safe("14 GET /v1/variants/w8a8 with an API key", a14b)


# 13
async def a13():
    from server.experiments.store import OutcomeStore

    tmp = Path(tempfile.mkdtemp())
    st = OutcomeStore(f"sqlite:///{tmp / 'x.db'}")
    with st.engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TRIGGER l BEFORE INSERT ON outcomes WHEN length(NEW.arm) > 200 BEGIN SELECT RAISE(ABORT, 'too long'); END"
        )
    logging.getLogger("leanserve.experiments").setLevel(logging.CRITICAL)
    st.start()
    row = lambda i, arm="a": {
        "request_id": i,
        "experiment": "e",
        "arm": arm,
        "variant": "m",
        "user_hash": None,
        "latency_s": 0.1,
        "ttft_s": 0.1,
        "prompt_tokens": 1,
        "completion_tokens": 1,
        "finish_reason": "stop",
        "error": None,
    }
    st.add(row("r1"))
    st.add(row("r2", "x" * 300))
    st.add(row("r3"))
    ok = await st.flush(timeout_s=5)
    written = sorted(r["request_id"] for r in st.rows("e"))
    await st.stop()
    return {
        "flushed": ok,
        "written": written,
        "pending": len(st.pending),
        "rejected": getattr(st, "rejected", "n/a"),
    }


safe("13 outcomes r1, r2 (arm 300 chars, refused), r3", lambda: asyncio.run(a13()))
