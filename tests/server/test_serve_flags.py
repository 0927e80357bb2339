"""`factpatch serve` credential flags: named after what they open, old names kept (hidden, warned about),
old and new together refused, and the agent token read from the same variables as the shard's."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

import factpatch.server.app as server_app
from factpatch.server.cli.serve import agent_token_options, client_tokens_option, serve

from .helpers import AGENT_TOKEN, write_tokens


class _Started:
    """Stands in for the server: records its configuration instead of listening."""
    seen: list = []

    def __init__(self, cfg):
        _Started.seen.append(cfg)

    def serve_forever(self):
        pass


@pytest.fixture
def started(monkeypatch):
    _Started.seen = []
    monkeypatch.setattr(server_app, "ControlPlaneServer", _Started)
    return _Started.seen


def _serve(tmp_path, *args: str, env: dict | None = None):
    app = typer.Typer()
    app.command("serve")(serve)
    app.command("noop")(lambda: None)  # two commands, so "serve" stays a sub-command
    env = {"FACTPATCH_AGENT_TOKEN": AGENT_TOKEN, "FACTPATCH_AGENT_TOKEN_FILE": None, **(env or {})}
    return CliRunner().invoke(app, ["serve", "--state-dir", str(tmp_path / "state"), "--gateway-listen", "off", *args],
                              env=env)


def test_client_tokens_file_is_the_flag(tmp_path, started):
    tokens = write_tokens(tmp_path / "t.yaml")
    r = _serve(tmp_path, "--client-tokens-file", str(tokens))
    assert r.exit_code == 0, r.output
    assert started[0].tokens_file == tokens and "deprecated" not in r.stderr
    assert started[0].agent_token == AGENT_TOKEN and started[0].agent_token_file is None


def test_the_old_tokens_file_flag_works_with_one_warning(tmp_path, started):
    tokens = write_tokens(tmp_path / "t.yaml")
    r = _serve(tmp_path, "--tokens-file", str(tokens))
    assert r.exit_code == 0, r.output
    assert started[0].tokens_file == tokens
    assert r.stderr.count("deprecated") == 1 and "--tokens-file" in r.stderr and "--client-tokens-file" in r.stderr


def test_old_and_new_tokens_flags_together_are_refused(tmp_path, started):
    tokens = write_tokens(tmp_path / "t.yaml")
    r = _serve(tmp_path, "--client-tokens-file", str(tokens), "--tokens-file", str(tokens))
    assert r.exit_code == 2 and not started
    assert "--tokens-file" in r.stderr and "--client-tokens-file" in r.stderr


def test_the_client_tokens_file_is_required(tmp_path, started):
    r = _serve(tmp_path)
    assert r.exit_code == 2 and not started
    assert "--client-tokens-file" in r.stderr


def test_help_shows_only_the_new_names(tmp_path):
    r = _serve(tmp_path, "--help", env={"COLUMNS": "300", "TERM": "dumb"})
    assert "--client-tokens-file" in r.stdout and "--agent-token-file" in r.stdout
    assert "--tokens-file" not in r.stdout


def test_option_resolution_directly(tmp_path, capsys):
    new, old = tmp_path / "new.yaml", tmp_path / "old.yaml"
    assert client_tokens_option(new, None) == new and capsys.readouterr().err == ""
    assert client_tokens_option(None, old) == old
    assert "--tokens-file is deprecated" in capsys.readouterr().err
    with pytest.raises(typer.BadParameter, match="--tokens-file and --client-tokens-file are the same option"):
        client_tokens_option(new, old)


def test_the_agent_token_comes_from_the_flag_then_the_shards_variables(tmp_path, started):
    f = tmp_path / "agent.token"
    f.write_text(AGENT_TOKEN + "\n")
    both = {"FACTPATCH_AGENT_TOKEN": AGENT_TOKEN, "FACTPATCH_AGENT_TOKEN_FILE": str(f)}
    assert agent_token_options(f, both) == ("", f)
    assert agent_token_options(None, both) == (AGENT_TOKEN, None)  # as on the shard: the token before the file
    assert agent_token_options(None, {"FACTPATCH_AGENT_TOKEN": "", "FACTPATCH_AGENT_TOKEN_FILE": str(f)}) == ("", f)
    assert agent_token_options(None, {}) == ("", None)  # the server refuses that, naming both variables
    with pytest.raises(typer.BadParameter, match="FACTPATCH_AGENT_TOKEN_FILE"):
        agent_token_options(None, {"FACTPATCH_AGENT_TOKEN_FILE": str(tmp_path / "missing")})

    tokens = str(write_tokens(tmp_path / "t.yaml"))
    r = _serve(tmp_path, "--client-tokens-file", tokens, env={"FACTPATCH_AGENT_TOKEN": None,
                                                              "FACTPATCH_AGENT_TOKEN_FILE": str(f)})
    assert r.exit_code == 0, r.output
    assert started[-1].agent_token_file == f and started[-1].agent_token == ""
