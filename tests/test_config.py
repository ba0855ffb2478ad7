"""Configuration: per-number profiles, and start-up errors that name the file, the key and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from telephony_bridge.config import example_config, load_config, parse_config, settings_from_env
from telephony_bridge.errors import ConfigError

REPO_CONFIG = Path(__file__).parent.parent / "config" / "bridge.toml"


def test_the_packaged_example_config_is_valid_and_has_two_numbers() -> None:
    config = parse_config(example_config(), "example")
    assert len(config.numbers) == 2


def test_the_repositorys_config_is_the_packaged_example() -> None:
    assert REPO_CONFIG.read_text(encoding="utf-8") == example_config(), (
        "edit telephony_bridge/bridge.example.toml, then: telephony-bridge init-config --force config/bridge.toml"
    )


def test_the_config_flag_wins_over_bridge_config_which_wins_over_the_default() -> None:
    assert settings_from_env({}).config_path == Path("config/bridge.toml")
    assert settings_from_env({"BRIDGE_CONFIG": "env.toml"}).config_path == Path("env.toml")
    assert settings_from_env({"BRIDGE_CONFIG": "env.toml"}, config_path=Path("flag.toml")).config_path == Path("flag.toml")


def test_a_number_table_overrides_the_defaults_and_keeps_the_rest() -> None:
    config = parse_config(
        """
        [defaults]
        voice = "marin"
        instructions = "default"
        [defaults.turn_detection]
        silence_duration_ms = 700
        [numbers."+14155550100"]
        instructions = "clinic"
        [numbers."+14155550100".turn_detection]
        threshold = 0.7
        """,
        "t.toml",
    )
    clinic = config.profile_for("+14155550100")
    assert (clinic.instructions, clinic.voice) == ("clinic", "marin")
    assert (clinic.turn_detection.threshold, clinic.turn_detection.silence_duration_ms) == (0.7, 700)


def test_an_unlisted_number_gets_the_defaults() -> None:
    config = parse_config('[defaults]\nvoice = "cedar"\n[numbers."+14155550100"]\nvoice = "sage"\n', "t.toml")
    assert config.profile_for("+15005550006").voice == "cedar"


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ('[defaults]\nvoise = "marin"\n', "defaults.voise", "unknown key"),
        ("[defaults]\nvoice = 5\n", "defaults.voice", "string"),
        ('[numbers."4155550100"]\nvoice = "marin"\n', 'numbers."4155550100"', "E.164"),
        ('[numbers."+14155550100".turn_detection]\ntype = "loud"\n', 'numbers."+14155550100".turn_detection.type', "server_vad"),
        ("[limits]\nmax_calls = 0\n", "limits.max_calls", "greater than"),
        ("[defaults\n", "<file>", "not valid TOML"),
        ('[defaults]\nvoice = ""\n', "defaults.voice", "should match pattern"),
        ('[numbers."+14155550100"]\nvoice = "Marin; drop"\n', 'numbers."+14155550100".voice', "should match pattern"),
        (f'[defaults]\ninstructions = "{"x" * (32 * 1024 + 1)}"\n', "defaults.instructions", "at most 32768 characters"),
        ('[defaults]\ninstructions = ""\n', "defaults.instructions", "at least 1 character"),
        (f'[defaults]\ngreeting = "{"x" * 4097}"\n', "defaults.greeting", "at most 4096 characters"),
        (f'[defaults]\nfallback_message = "{"x" * 4097}"\n', "defaults.fallback_message", "at most 4096 characters"),
        ('[defaults]\nfallback_message = ""\n', "defaults.fallback_message", "at least 1 character"),
        (f'[limits]\nbusy_message = "{"x" * 4097}"\n', "limits.busy_message", "at most 4096 characters"),
        ("[http]\nheader_timeout_seconds = 0\n", "http.header_timeout_seconds", "greater than 0"),
        ("[http]\nmax_connections = 0\n", "http.max_connections", "greater than or equal to 1"),
    ],
)
def test_an_invalid_config_names_the_file_the_key_and_the_reason(text: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "config/bad.toml")
    message = str(raised.value)
    assert message.startswith(f"config/bad.toml: {key}: ")
    assert reason in message
    assert "\n" not in message


def test_a_missing_config_file_is_an_error_naming_it_and_how_to_write_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing.toml: <file>: cannot be read") as raised:
        load_config(tmp_path / "missing.toml")
    assert f"telephony-bridge init-config {tmp_path / 'missing.toml'}" in str(raised.value)


def test_an_18_mb_instructions_is_refused_in_one_short_line() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(f'[defaults]\ninstructions = "{"x" * 18_000_000}"\n', "config/bad.toml")
    assert str(raised.value).startswith("config/bad.toml: defaults.instructions: ")
    assert len(str(raised.value)) < 200


def test_a_config_file_that_is_not_utf8_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[defaults]\ngreeting = "Grüß Gott"\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(raised.value) == f"{path}: <file>: not UTF-8 text (byte 25 cannot be decoded)"


def test_an_empty_greeting_turns_a_default_greeting_off_for_one_number() -> None:
    config = parse_config('[defaults]\ngreeting = "Hello"\n[numbers."+14155550100"]\ngreeting = ""\n', "t.toml")
    assert config.profile_for("+14155550100").greeting == ""


def test_http_deadlines_default_to_10_s_and_the_connection_cap_follows_max_calls() -> None:
    http = parse_config("[limits]\nmax_calls = 20\n", "t.toml").http
    assert (http.header_timeout_seconds, http.body_timeout_seconds, http.keep_alive_seconds) == (10.0, 10.0, 5.0)
    assert http.max_connections == 20 * 4 + 64
    assert parse_config("[http]\nmax_connections = 300\n", "t.toml").http.max_connections == 300


def test_openai_is_the_default_endpoint_with_the_ga_dialect() -> None:
    settings = settings_from_env({"OPENAI_API_KEY": "sk-test"})
    assert settings.realtime.url == "wss://api.openai.com/v1/realtime?model=gpt-realtime-1.5"
    assert settings.realtime.headers == {"Authorization": "Bearer sk-test"}
    assert settings.realtime.dialect == "ga"


def test_azure_ga_uses_the_v1_path_and_the_api_key_header() -> None:
    settings = settings_from_env(
        {"AZURE_OPENAI_ENDPOINT": "https://clinic.openai.azure.com/", "AZURE_OPENAI_API_KEY": "k",
         "AZURE_OPENAI_DEPLOYMENT": "rt"}
    )
    assert settings.realtime.url == "wss://clinic.openai.azure.com/openai/v1/realtime?model=rt"
    assert settings.realtime.headers == {"api-key": "k"}
    assert settings.realtime.dialect == "ga"


def test_an_azure_api_version_selects_the_preview_path_and_dialect() -> None:
    settings = settings_from_env(
        {
            "AZURE_OPENAI_ENDPOINT": "https://clinic.openai.azure.com",
            "AZURE_OPENAI_API_KEY": "k",
            "AZURE_OPENAI_DEPLOYMENT": "rt",
            "AZURE_OPENAI_API_VERSION": "2024-10-01-preview",
        }
    )
    assert settings.realtime.url == "wss://clinic.openai.azure.com/openai/realtime?api-version=2024-10-01-preview&deployment=rt"
    assert settings.realtime.dialect == "preview"


def test_realtime_url_and_realtime_api_override_the_endpoint() -> None:
    settings = settings_from_env({"REALTIME_URL": "ws://127.0.0.1:9/v1/realtime", "REALTIME_API": "preview"})
    assert (settings.realtime.url, settings.realtime.dialect) == ("ws://127.0.0.1:9/v1/realtime", "preview")


def test_secrets_stay_out_of_the_settings_repr() -> None:
    settings = settings_from_env({"OPENAI_API_KEY": "sk-secret-123", "TWILIO_AUTH_TOKEN": "tw-secret-456"})
    assert "sk-secret-123" not in repr(settings) and "tw-secret-456" not in repr(settings)


def test_the_media_stream_url_is_the_public_host_over_wss() -> None:
    settings = settings_from_env({"PUBLIC_URL": "https://bridge.example.com/"})
    assert settings.media_stream_url == "wss://bridge.example.com/twilio/media"
    assert settings.voice_webhook_url == "https://bridge.example.com/twilio/voice"


def test_an_invalid_public_url_is_an_error_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="environment: PUBLIC_URL"):
        settings_from_env({"PUBLIC_URL": "bridge.example.com"})


def test_recording_is_off_by_default_and_goes_to_the_recordings_folder() -> None:
    config = parse_config('[numbers."+14155550100"]\nvoice = "sage"\n', "t.toml")
    profile = config.profile_for("+14155550100")
    assert (profile.record, profile.redact) == (False, False)
    assert config.recording.folder == "recordings"


def test_record_and_redact_are_set_per_number_over_the_defaults() -> None:
    config = parse_config(
        """
        [defaults]
        record = true
        [numbers."+14155550100"]
        redact = true
        [numbers."+14155550101"]
        record = false
        [recording]
        folder = "/var/lib/telephony-bridge/calls"
        """,
        "t.toml",
    )
    assert (config.profile_for("+14155550100").record, config.profile_for("+14155550100").redact) == (True, True)
    assert config.profile_for("+14155550101").record is False
    assert config.profile_for("+15005550006").record is True
    assert config.recording.folder == "/var/lib/telephony-bridge/calls"


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ('[defaults]\nrecord = "yes"\n', "defaults.record", "boolean"),
        ("[defaults]\nredact = 1\n", "defaults.redact", "boolean"),
        ("[recording]\nfolder = 5\n", "recording.folder", "string"),
        ('[recording]\nfodler = "calls"\n', "recording.fodler", "unknown key"),
        ('[recording]\nfolder = ""\n', "recording.folder", "at least 1 character"),
    ],
)
def test_an_invalid_recording_setting_names_the_file_the_key_and_the_reason(text: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "config/bad.toml")
    assert str(raised.value).startswith(f"config/bad.toml: {key}: ")
    assert reason in str(raised.value)


def test_callers_are_masked_in_logs_and_calls_go_to_calls_sqlite3_by_default() -> None:
    config = parse_config("", "t.toml")
    assert config.logging.mask_caller_numbers is True
    assert config.call_log.path == "calls.sqlite3"


def test_the_call_log_can_be_moved_or_turned_off_and_masking_turned_off() -> None:
    config = parse_config('[logging]\nmask_caller_numbers = false\n[call_log]\npath = ""\n', "t.toml")
    assert (config.logging.mask_caller_numbers, config.call_log.path) == (False, "")
    assert parse_config('[call_log]\npath = "/var/lib/bridge/calls.db"\n', "t.toml").call_log.path == "/var/lib/bridge/calls.db"


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ('[logging]\nmask_caller_numbers = "yes"\n', "logging.mask_caller_numbers", "boolean"),
        ("[logging]\nmask_numbers = true\n", "logging.mask_numbers", "unknown key"),
        ("[call_log]\npath = false\n", "call_log.path", "string"),
        ('[call_log]\nfile = "calls.sqlite3"\n', "call_log.file", "unknown key"),
    ],
)
def test_an_invalid_logging_or_call_log_setting_names_the_file_the_key_and_the_reason(text: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "config/bad.toml")
    assert str(raised.value).startswith(f"config/bad.toml: {key}: ")
    assert reason in str(raised.value)


@pytest.mark.parametrize(
    ("table", "key", "reason"),
    [
        ('type = "server_vad"\neagerness = "low"', "turn_detection",
         "eagerness: a semantic_vad setting, not taken by type = 'server_vad'"),
        ('type = "semantic_vad"\nsilence_duration_ms = 300', "turn_detection",
         "silence_duration_ms: a server_vad setting, not taken by type = 'semantic_vad'"),
        ('type = "semantic_vad"\nidle_timeout_ms = 8000', "turn_detection", "idle_timeout_ms: a server_vad setting"),
        ("idle_timeout_ms = 0", "turn_detection.idle_timeout_ms", "greater than 0"),
    ],
)
def test_a_vad_field_of_the_other_vad_type_is_an_error(table: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(f'[numbers."+14155550100".turn_detection]\n{table}\n', "bridge.toml")
    assert str(raised.value).startswith(f'bridge.toml: numbers."+14155550100".{key}: ')
    assert reason in str(raised.value)
    assert "\n" not in str(raised.value)


def test_a_number_naming_another_vad_type_does_not_inherit_the_defaults_fields_of_the_first() -> None:
    config = parse_config(
        '[defaults.turn_detection]\nsilence_duration_ms = 300\n'
        '[numbers."+14155550100".turn_detection]\ntype = "semantic_vad"\neagerness = "low"\n', "bridge.toml"
    )
    assert config.profile_for("+14155550100").turn_detection.model_dump(exclude_none=True) == {
        "type": "semantic_vad", "eagerness": "low"
    }
    assert config.defaults.turn_detection.silence_duration_ms == 300


def test_noise_reduction_and_idle_timeout_are_set_per_number() -> None:
    config = parse_config(
        '[numbers."+14155550100"]\nnoise_reduction = "far_field"\n'
        '[numbers."+14155550100".turn_detection]\nidle_timeout_ms = 8000\n',
        "bridge.toml", "ga",
    )
    profile = config.profile_for("+14155550100")
    assert (profile.noise_reduction, profile.turn_detection.idle_timeout_ms) == ("far_field", 8000)
    assert config.defaults.noise_reduction is None
    with pytest.raises(ConfigError, match=r"noise_reduction: Input should be 'near_field' or 'far_field'"):
        parse_config('[defaults]\nnoise_reduction = "loud"\n', "bridge.toml")


def test_ga_only_settings_are_errors_for_the_preview_dialect_each_named_once() -> None:
    text = ('[defaults]\nvoice = "alloy"\nnoise_reduction = "near_field"\n[defaults.turn_detection]\nidle_timeout_ms = 8000\n'
            '[numbers."+14155550100"]\nvoice = "sage"\n')
    parse_config(text, "bridge.toml", dialect="ga")
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "bridge.toml", dialect="preview")
    assert str(raised.value).splitlines() == [
        "bridge.toml: defaults.noise_reduction: GA only: the preview dialect has no noise reduction",
        "bridge.toml: defaults.turn_detection.idle_timeout_ms: GA only: the preview dialect has no idle timeout",
    ]


@pytest.mark.parametrize(("dialect", "voice", "ok"), [
    ("ga", "marin", True), ("ga", "cedar", True), ("ga", "alloy", True), ("ga", "nova", False),
    ("preview", "alloy", True), ("preview", "verse", True), ("preview", "marin", False), ("preview", "cedar", False),
])
def test_a_voice_is_checked_against_the_dialect_as_a_start_up_error(dialect: str, voice: str, ok: bool) -> None:
    text = f'[defaults]\nvoice = "alloy"\n[numbers."+14155550100"]\nvoice = "{voice}"\n'
    if ok:
        assert parse_config(text, "bridge.toml", dialect=dialect).profile_for("+14155550100").voice == voice  # type: ignore[arg-type]
        return
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "bridge.toml", dialect=dialect)  # type: ignore[arg-type]
    assert str(raised.value).startswith(f"bridge.toml: numbers.\"+14155550100\".voice: '{voice}' is not a voice of ")


def test_the_dialect_is_checked_on_reload_as_at_start_up(tmp_path: Path) -> None:
    path = tmp_path / "bridge.toml"
    path.write_text('[defaults]\nvoice = "marin"\n')
    assert load_config(path, dialect="ga").defaults.voice == "marin"
    with pytest.raises(ConfigError, match="defaults.voice: 'marin' is not a voice of the 2024-10-01 preview"):
        load_config(path, dialect="preview")
