"""env.options / --env-option: constructor arguments of the default env, checked before workers start.
Options inside pool workers and the sandbox: tests/integration/envs/test_env_options_in_workers.py."""

from __future__ import annotations

import psutil
import pytest

from nemo_rlvr.config import ConfigError, EnvConfig, load_config
from nemo_rlvr.envs.registry import EnvOptionError, check_env_options
from nemo_rlvr.scoring.cli import main
from nemo_rlvr.scoring.pool import VerifierPool

MODULE = "tests.helpers.verifier_envs"


def test_options_are_checked_and_coerced_to_the_constructor_types():
    assert check_env_options("test_scaled", MODULE, {"scale": 3, "tag": "t"}) == {"scale": 3.0, "tag": "t"}
    assert check_env_options("code", None, {"max_parallel": "2"}) == {"max_parallel": 2}
    assert check_env_options("test_needs_option", MODULE, {"scale": 1, "anything": [1]}) == {
        "scale": 1.0, "anything": [1]}  # **extra takes any name


@pytest.mark.parametrize("env, options, needle", [
    ("test_scaled", {"scael": 2}, ("env.options.scael: environment 'test_scaled' has no option 'scael'; "
                                   "it accepts scale=1.0, tag='pid'.")),
    ("test_scaled", {"scale": "high"}, "env.options.scale='high': Input should be a valid number"),
    ("code", {"timeout_s": 0}, "env.options.timeout_s=0: Input should be greater than 0"),
    ("code", {"max_parallel": 0}, "env.options.max_parallel=0: Input should be greater than or equal to 1"),
    ("code", {"sandbox_mode": "docker"}, ("env.options.sandbox_mode='docker': Input should be "
                                          "'namespaces', 'userns' or 'rlimits'")),
    ("math", {"strict": True}, "environment 'math' has no option 'strict'; it accepts no options."),
    ("test_needs_option", {}, "environment 'test_needs_option' needs option 'scale'"),
])
def test_bad_options_name_the_key_and_what_is_accepted(env, options, needle):
    with pytest.raises(EnvOptionError) as e:
        check_env_options(env, MODULE, options)
    assert needle in str(e.value)


def test_bad_options_fail_before_any_worker_starts():
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(EnvOptionError, match="env.options.scael"):
        VerifierPool(EnvConfig(name="test_scaled", module=MODULE, num_workers=2, options={"scael": 2}))
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before


def test_config_overrides_and_the_remote_conflict():
    cfg = load_config(None, ["env.name=code", "env.options.timeout_s=2", "env.options.max_parallel=1"])
    assert cfg.env.options == {"timeout_s": 2, "max_parallel": 1}
    with pytest.raises(ConfigError, match=r"env.options=.* has no effect with env.url="):
        load_config(None, ["env.url=http://127.0.0.1:9", "env.options.timeout_s=2"])


def test_cli_env_option(tmp_path, capsys):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text('{"id": 1, "response": "3"}\n')
    base = ["verify", "--env", "test_scaled", "--env-module", MODULE, "--input", str(src), "--output", str(dst),
            "--workers", "0"]
    assert main([*base, "--env-option", "scale=2", "--env-option", "tag=t"]) == 0
    assert '"reward": 6.0' in dst.read_text()
    assert main([*base, "--env-option", "scael=2"]) == 2
    assert "--env-option: env.options.scael: environment 'test_scaled' has no option 'scael'" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--env-option", "no-equals-sign"])
    assert "is not KEY=VALUE" in capsys.readouterr().err
