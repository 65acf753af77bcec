"""Settings as a user meets them: defaults, paperbot.toml, the environment, `paperbot config`."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from bot.config import SETTINGS, describe_settings, load_settings
from bot.errors import SettingsError

TOKEN = "hf_QmTzRk8vWb3NpLx7YcDe2FgHs9"


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """An empty working folder, so no stray ./paperbot.toml is read."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_paperbot(*args: str, env: dict):
    # Imported here so that the settings tests above do not depend on every module the CLI loads.
    from bot.cli import main

    return CliRunner().invoke(main, list(args), env=env)


def write_toml(folder, text: str, name: str = "paperbot.toml"):
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_need_no_file(folder):
    settings = load_settings(None, environ={})

    assert dict(settings) == {s.key: s.default for s in SETTINGS}
    assert settings["database.path"] == "./paperbot.db"
    assert settings["hf.base_url"] == "https://huggingface.co"
    assert settings["hf.timeout"] == 20.0 and settings["hf.token"] is None
    assert set(settings.origins.values()) == {"default"}


def test_paperbot_toml_in_the_working_folder_sets_values(folder):
    write_toml(
        folder,
        '[hf]\ntimeout = 10\nretries = 2\n\n[database]\npath = "/var/lib/paperbot/paperbot.db"\n'
        "\n[poll]\ninterval_minutes = 15\n",
    )

    settings = load_settings(None, environ={})

    assert settings["hf.timeout"] == 10.0 and isinstance(settings["hf.timeout"], float)
    assert settings["hf.retries"] == 2
    assert settings["database.path"] == "/var/lib/paperbot/paperbot.db"
    assert settings["poll.interval_minutes"] == 15
    assert settings.origins["hf.timeout"] == "paperbot.toml"
    assert settings["hf.page_size"] == 100 and settings.origins["hf.page_size"] == "default"


def test_the_file_can_be_named_by_argument_or_paperbot_config(folder):
    path = write_toml(folder, "[hf]\npage_size = 50\n", name="elsewhere.toml")

    assert load_settings(path, environ={})["hf.page_size"] == 50
    assert load_settings(None, environ={"PAPERBOT_CONFIG": str(path)})["hf.page_size"] == 50
    assert load_settings(None, environ={})["hf.page_size"] == 100  # not ./paperbot.toml


def test_environment_overrides_the_file(folder):
    write_toml(folder, '[hf]\ntimeout = 10.0\nbase_url = "http://127.0.0.1:8000"\n')

    settings = load_settings(None, environ={"PAPERBOT_HF_TIMEOUT": "5", "PAPERBOT_POLL_REFRESH_DAYS": "7"})

    assert settings["hf.timeout"] == 5.0
    assert settings.origins["hf.timeout"] == "env PAPERBOT_HF_TIMEOUT"
    assert settings["poll.refresh_days"] == 7
    assert settings["hf.base_url"] == "http://127.0.0.1:8000"  # from the file, not overridden


def test_paperbot_db_and_hf_token_are_read_too(folder):
    settings = load_settings(None, environ={"PAPERBOT_DB": "/data/p.db", "HF_TOKEN": TOKEN})

    assert settings["database.path"] == "/data/p.db"
    assert settings.origins["database.path"] == "env PAPERBOT_DB"
    assert settings["hf.token"] == TOKEN
    assert settings.origins["hf.token"] == "env HF_TOKEN"


def test_the_command_line_overrides_the_environment(folder):
    settings = load_settings(
        None, environ={"PAPERBOT_DB": "/data/p.db"}, overrides={"database.path": "/tmp/cli.db"}
    )

    assert settings["database.path"] == "/tmp/cli.db"
    assert settings.origins["database.path"] == "command line"


def test_an_unknown_key_is_named_with_a_suggestion(folder):
    path = write_toml(folder, "[hf]\ntimout = 3\n")

    with pytest.raises(SettingsError) as caught:
        load_settings(None, environ={})

    message = str(caught.value)
    assert "unknown key 'hf.timout'" in message
    assert "did you mean 'hf.timeout'?" in message
    assert message.startswith(str(path.name))


@pytest.mark.parametrize(
    ("toml", "key", "fix"),
    [
        ('[hf]\ntimeout = "soon"\n', "hf.timeout", "write a number, e.g. 20.0"),
        ("[hf]\nretries = 2.5\n", "hf.retries", "write a whole number"),
        ("[hf]\nretries = true\n", "hf.retries", "write a whole number"),
        ("[database]\npath = 5\n", "database.path", "write text in quotes"),
        ("[hf]\ntimeout = 0\n", "hf.timeout", "must be greater than 0"),
        ("[hf]\nretries = -1\n", "hf.retries", "must be 0 or more"),
        ('[hf]\nbase_url = "huggingface.co"\n', "hf.base_url", "must start with http:// or https://"),
    ],
)
def test_a_wrong_value_names_the_key_and_what_to_write(folder, toml, key, fix):
    write_toml(folder, toml)

    with pytest.raises(SettingsError) as caught:
        load_settings(None, environ={})

    assert key in str(caught.value) and fix in str(caught.value)
    assert "paperbot.toml" in str(caught.value)


def test_a_wrong_value_in_the_environment_names_the_variable(folder):
    with pytest.raises(SettingsError) as caught:
        load_settings(None, environ={"PAPERBOT_HF_TIMEOUT": "soon"})

    assert "environment PAPERBOT_HF_TIMEOUT" in str(caught.value)
    assert "hf.timeout = 'soon'" in str(caught.value)
    assert "write a number" in str(caught.value)


def test_a_secret_in_the_file_is_an_error_pointing_to_the_environment(folder):
    write_toml(folder, f'[hf]\ntoken = "{TOKEN}"\n')

    with pytest.raises(SettingsError) as caught:
        load_settings(None, environ={})

    message = str(caught.value)
    assert "'hf.token' is a secret" in message
    assert "HF_TOKEN" in message and "remove it from the file" in message
    assert TOKEN not in message


def test_invalid_toml_names_the_file(folder):
    path = write_toml(folder, "[hf\ntimeout = 10\n", name="broken.toml")

    with pytest.raises(SettingsError, match="not valid TOML") as caught:
        load_settings(path, environ={})

    assert str(path) in str(caught.value)


def test_a_file_that_is_not_utf8_is_a_settings_error(folder):
    path = folder / "latin1.toml"
    path.write_bytes('[database]\npath = "/données/p.db"\n'.encode("latin-1"))

    with pytest.raises(SettingsError, match="not valid TOML") as caught:
        load_settings(path, environ={})

    assert str(path) in str(caught.value)


@pytest.mark.parametrize("name", ["missing.toml", "a-folder"])
def test_a_settings_file_that_cannot_be_read_is_a_settings_error(folder, name):
    (folder / "a-folder").mkdir()

    with pytest.raises(SettingsError) as caught:
        load_settings(folder / name, environ={})

    assert name in str(caught.value)


def test_describe_settings_masks_the_token(folder):
    settings = load_settings(None, environ={"HF_TOKEN": TOKEN})

    rows = {key: (shown, origin) for key, shown, origin in describe_settings(settings)}

    assert set(rows) == {s.key for s in SETTINGS}
    shown, origin = rows["hf.token"]
    assert origin == "env HF_TOKEN"
    assert shown == "****** (set)"
    assert all(TOKEN not in text for row in describe_settings(settings) for text in row)
    assert rows["hf.timeout"] == ("20.0", "default")


def test_paperbot_config_shows_the_masked_token_not_the_secret(folder):
    env = {"HF_TOKEN": TOKEN, "PAPERBOT_CONFIG": None, "PAPERBOT_DB": None, "PAPERBOT_HF_TOKEN": None}
    write_toml(folder, "[hf]\ntimeout = 7.5\n")

    result = run_paperbot("config", env=env)

    assert result.exit_code == 0, result.output
    assert TOKEN not in result.output
    token_line = next(line for line in result.output.splitlines() if line.startswith("hf.token"))
    assert "****** (set)" in token_line and "env HF_TOKEN" in token_line and TOKEN[:3] not in token_line
    timeout_line = next(line for line in result.output.splitlines() if line.startswith("hf.timeout"))
    assert "7.5" in timeout_line and "paperbot.toml" in timeout_line


def test_paperbot_config_with_a_secret_in_the_file_fails_in_one_line(folder):
    env = {"HF_TOKEN": None, "PAPERBOT_CONFIG": None, "PAPERBOT_DB": None}
    write_toml(folder, f'[hf]\ntoken = "{TOKEN}"\n')

    result = run_paperbot("config", env=env)

    assert result.exit_code == 2
    assert "is a secret" in result.output and TOKEN not in result.output
    assert "Traceback" not in result.output
