"""compress/vllm_command.py is the one place a vLLM server's command line and environment are
built: the gateway's engines and compress's speed runs both start vLLM through it."""

from __future__ import annotations

from compress.vllm_command import free_port, vllm_command, vllm_environment


def test_the_command_serves_the_model_under_its_name_and_later_flags_win():
    cmd = vllm_command(
        "/py",
        "/models/m",
        "m:w4a16",
        8123,
        max_model_len=1024,
        enforce_eager=True,
        flags=["--tensor-parallel-size", "2", "--max-model-len", "512"],
    )
    assert cmd[:3] == ["/py", "-m", "vllm.entrypoints.openai.api_server"]
    assert cmd[cmd.index("--model") + 1] == "/models/m"
    assert cmd[cmd.index("--served-model-name") + 1] == "m:w4a16"
    assert cmd[cmd.index("--port") + 1] == "8123"
    assert "--enforce-eager" in cmd and "--trust-remote-code" not in cmd
    # argparse keeps the last value: the flags (a placement's, then extra args) override.
    assert cmd[-4:] == ["--tensor-parallel-size", "2", "--max-model-len", "512"]


def test_the_environment_keeps_engines_off_the_hub_and_lets_an_inherited_kv_size_win():
    env = vllm_environment({"PATH": "/bin"}, 2.5)
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2.5" and env["PATH"] == "/bin"
    assert env["HF_HUB_OFFLINE"] == env["TRANSFORMERS_OFFLINE"] == "1"
    assert env["VLLM_NO_USAGE_STATS"] == "1"
    assert vllm_environment({"VLLM_CPU_KVCACHE_SPACE": "8"}, 1)["VLLM_CPU_KVCACHE_SPACE"] == "8"
    assert "HF_HUB_OFFLINE" not in vllm_environment({}, 1, offline=False)


def test_a_free_port_can_be_bound():
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
