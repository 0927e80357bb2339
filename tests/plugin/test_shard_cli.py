"""`factpatch shard` wires the plugin: worker extension, both plugin names, the token, eager on CPU."""

from __future__ import annotations

import pytest

from factpatch.plugin.shard_cli import shard_command
from tests.server.helpers import AGENT_TOKEN, OPERATOR_TOKEN


def test_command_and_environment(tmp_path):
    tok = tmp_path / "token"
    tok.write_text(AGENT_TOKEN)
    argv, env = shard_command("/m", port=9001, agent_token_file=str(tok), extra=["--max-model-len", "128"],
                              env={"VLLM_PLUGINS": "other", "FACTPATCH_AGENT_TOKEN": "old"})
    assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert argv[argv.index("--worker-extension-cls") + 1] == "factpatch.plugin.worker_ext.FactpatchWorkerExtension"
    assert argv[argv.index("--port") + 1] == "9001" and argv[-2:] == ["--max-model-len", "128"]
    assert env["VLLM_PLUGINS"] == "other,factpatch,factpatch_agent"
    assert env["FACTPATCH_AGENT_TOKEN_FILE"] == str(tok.resolve()) and "FACTPATCH_AGENT_TOKEN" not in env


def test_a_token_is_required():
    with pytest.raises(ValueError, match="token"):
        shard_command("/m", env={})
    argv, env = shard_command("/m", env={"FACTPATCH_AGENT_TOKEN": AGENT_TOKEN})
    assert env["FACTPATCH_AGENT_TOKEN"] == AGENT_TOKEN


@pytest.mark.parametrize("token, says", [
    (" ", "empty or whitespace"), ("\xa0" * 40, "empty or whitespace"),
    ("Q7fK2d9xLm4Tz8Rb 1Vn6Wc3Yh5Ja0Ps", "characters outside"), ("Q7fK2d9xLm4Tz8Rb1Vn6Wc3Yh5Ja0Psé", "characters outside"), ("change-me", "characters; at least 32"),
    ("change-me-change-me-change-me-change-me", "placeholder"), ("s3cret", "at least 32"), ("a" * 40, "distinct"),
])
def test_a_weak_token_is_refused_before_vllm_starts(tmp_path, token, says):
    with pytest.raises(ValueError, match=says):
        shard_command("/m", env={"FACTPATCH_AGENT_TOKEN": token})
    tok = tmp_path / "token"
    tok.write_text(token + "\n")
    with pytest.raises(ValueError, match="agent token"):
        shard_command("/m", agent_token_file=str(tok), env={})


def test_a_token_file_may_hold_the_next_token_too(tmp_path):
    tok = tmp_path / "token"
    tok.write_text(f"# rotation: both accepted until the old line goes\n{AGENT_TOKEN}\n{OPERATOR_TOKEN}\n")
    from factpatch.plugin.auth import configured_tokens

    _, env = shard_command("/m", agent_token_file=str(tok), env={})
    assert configured_tokens(env) == [AGENT_TOKEN, OPERATOR_TOKEN]


def test_vllm_dev_mode_is_refused():
    with pytest.raises(ValueError, match="VLLM_SERVER_DEV_MODE"):
        shard_command("/m", env={"FACTPATCH_AGENT_TOKEN": AGENT_TOKEN, "VLLM_SERVER_DEV_MODE": "1"})


def test_a_folder_that_is_no_model_is_refused_before_vllm_starts(tmp_path):
    import subprocess
    import sys

    tok = tmp_path / "token"
    tok.write_text(AGENT_TOKEN)
    empty = tmp_path / "empty"
    empty.mkdir()
    for model, says in ((str(empty), "the folder has no config.json"), (str(tmp_path / "missing"), "no such folder")):
        r = subprocess.run([sys.executable, "-c", "from factpatch.cli import main; main()", "shard", "--model", model,
                            "--agent-token-file", str(tok)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stderr[-2000:]
        assert f"--model {model}: {says}" in r.stderr


def _dry_run(*args: str):
    from typer.testing import CliRunner

    from factpatch.cli import _register_subcommands, app

    _register_subcommands()
    return CliRunner().invoke(app, ["shard", "--model", "/m", "--dry-run", *args],
                              env={"FACTPATCH_AGENT_TOKEN": None, "FACTPATCH_AGENT_TOKEN_FILE": None})


def test_agent_token_file_is_the_flag_and_token_file_its_old_name(tmp_path):
    """The same flag name as `serve --agent-token-file`: one secret, one name on both sides."""
    tok = tmp_path / "token"
    tok.write_text(AGENT_TOKEN)
    r = _dry_run("--agent-token-file", str(tok))
    assert r.exit_code == 0, r.output
    assert f"FACTPATCH_AGENT_TOKEN_FILE={tok.resolve()}" in r.stdout and "deprecated" not in r.stderr

    r = _dry_run("--token-file", str(tok))  # unit files and scripts written before the rename keep working
    assert r.exit_code == 0, r.output
    assert f"FACTPATCH_AGENT_TOKEN_FILE={tok.resolve()}" in r.stdout
    assert r.stderr.count("deprecated") == 1 and "--token-file" in r.stderr and "--agent-token-file" in r.stderr

    r = _dry_run("--agent-token-file", str(tok), "--token-file", str(tok))
    assert r.exit_code == 2 and "FACTPATCH_AGENT_TOKEN_FILE" not in r.stdout
    assert "--token-file" in r.stderr and "--agent-token-file" in r.stderr

    r = _dry_run("--help")
    assert "--agent-token-file" in r.stdout and "--token-file" not in r.stdout.replace("--agent-token-file", "")
