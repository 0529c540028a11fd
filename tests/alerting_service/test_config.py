"""Configuration: a bad setting stops the start with a message naming the key, and never a secret."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from alerting_service.cli import EX_CONFIG, main
from alerting_service.config import (
    ConfigError,
    EmailConfig,
    SmartHost,
    load_alerting_config,
    load_settings,
    parse_alerting_config,
)
from tests.alerting_service.delivery_fixtures import new_whsec

SECRET = "hunter2-smtp-password"
EMAIL = {"to": ["oncall@bank.example"], "from": "af@bank.example", "smarthost": {"host": "smtp.bank.example"}}
WEBHOOK = {"url": "https://hooks.bank.example/airflow", "secrets": [new_whsec()]}
GOOD = {
    "receivers": [
        {"name": "oncall-email", "email": EMAIL | {"username": "alerts", "password": SECRET}},
        {"name": "incident-webhook", "webhook": WEBHOOK},
    ],
    "route": {
        "receivers": [],
        "routes": [
            {
                "match": {"type": ["task_failure", "dag_run_failure"]},
                "receivers": ["oncall-email", "incident-webhook"],
            },
            {"match": {"type": "task_retry"}, "receivers": ["incident-webhook"]},
        ],
    },
    "retry": {"horizon": "24h", "initial_backoff": "5s", "max_backoff": "2h"},
}


def parse(document: object) -> None:
    parse_alerting_config(yaml.safe_dump(document), "alerting.yaml")


def test_the_design_documents_example_is_valid() -> None:
    config = parse_alerting_config(yaml.safe_dump(GOOD), "alerting.yaml")

    assert [receiver.integration for receiver in config.receivers] == ["email", "webhook"]
    assert config.retry.horizon == timedelta(hours=24)
    assert config.retry.initial_backoff == timedelta(seconds=5)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {
                "route": {
                    "receivers": [],
                    "routes": [{"receivers": ["oncall-email"]}, {"receivers": ["pager"]}],
                }
            },
            "route.routes[1].receivers: unknown receiver 'pager'",
        ),
        (
            {"receivers": [{"name": "x", "webhook": WEBHOOK}, {"name": "x", "email": EMAIL}]},
            "receivers: duplicate name 'x'",
        ),
        ({"receivers": [{"name": "x"}]}, "receivers[0]: a receiver has exactly one of: email, webhook"),
        (
            {"receivers": [{"name": "x", "email": EMAIL, "webhook": WEBHOOK}]},
            "receivers[0]: a receiver has exactly",
        ),
        ({"receivers": [{"name": "x", "email": EMAIL | {"to": ["nobody"]}}]}, "receivers[0].email.to"),
        ({"receivers": [{"name": "x", "email": EMAIL | {"tls": "ssl"}}]}, "receivers[0].email.tls"),
        (
            {"receivers": [{"name": "x", "webhook": WEBHOOK | {"url": "ftp://hooks.example"}}]},
            "receivers[0].webhook.url: must be an http(s) URL with a host",
        ),
        (
            {"receivers": [{"name": "x", "webhook": {"url": "https://h.example"}}]},
            "receivers[0].webhook: a standard webhook is signed: set secrets or secrets_file",
        ),
        (
            {"receivers": [{"name": "x", "webhook": WEBHOOK | {"secrets": ["not-a-whsec"]}}]},
            "receivers[0].webhook.secrets: secret #1 is not whsec_",
        ),
        (
            # 23 bytes: Standard Webhooks keys are 24 to 64 bytes, and a shorter HMAC key is a weaker one.
            {
                "receivers": [
                    {
                        "name": "x",
                        "webhook": WEBHOOK | {"secrets": ["whsec_a2tra2tra2tra2tra2tra2tra2tra2s="]},
                    }
                ]
            },
            "receivers[0].webhook.secrets: secret #1 is not whsec_<base64 of at least 24 bytes>",
        ),
        ({"route": {"match": {"colour": "red"}}}, "route.match: unknown match key 'colour'"),
        ({"route": {"match": {"type": "task_exploded"}}}, "route.match: match key 'type'"),
        ({"retry": {"horizon": "soon"}}, "retry.horizon: use a duration like 30s, 5m, 2h or 1h30m"),
        ({"retry": {"initial_backoff": "1h", "max_backoff": "1m"}}, "retry: max_backoff must not be shorter"),
        ({"retry": {"horizon": "99999999999d"}}, "retry.horizon: too long: a duration is at most 999999999d"),
        ({"retry": {"horizon": "31d"}}, "retry.horizon: must be at most 30d"),
        ({"retry": {"horizon": "1h", "max_backoff": "2h"}}, "retry: max_backoff must not be longer"),
        ({"surprise": 1}, "the top level: a key there is not a setting"),
        (
            {"receivers": [{"name": "x", "email": {"to": ["a@bank.example"], "smarthost": {"host": "h"}}}]},
            "receivers[0].email.from: Field required",
        ),
        (
            {
                "expectations": [
                    {"dag_id": "d", "succeed_by": "04:00"},
                    {"dag_id": "d", "succeed_by": "05:00"},
                ]
            },
            "expectations: one expectation per DAG: 'd' has several",
        ),
        (
            {"expectations": [{"dag_id": "d", "succeed_by": "04:00", "labels": {"team-name": "data"}}]},
            "expectations[0].labels.team-name.[key]: String should match pattern",
        ),
        (
            {"expectations": [{"dag_id": "d", "succeed_by": "04:00", "labels": {"team": "d" * 1025}}]},
            "expectations[0].labels.team: String should have at most 1024 characters",
        ),
        (
            {"expectations": [{"dag_id": "d", "succeed_by": "04:00", "labels": {"source": "cron"}}]},
            "expectations[0].labels: 'source' is set by the service",
        ),
        (
            {"expectations": [{"dag_id": "daily etl", "succeed_by": "04:00"}]},
            "expectations[0].dag_id: must be an Airflow id: letters, digits, '_', '.' and '-' only",
        ),
        (
            {"route": {"match": {"labels.team-name": "data"}}},
            "route.match: unknown match key 'labels.team-name'",
        ),
    ],
)
def test_a_bad_config_names_the_key(change: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse(GOOD | change)

    assert message in str(raised.value)


@pytest.mark.parametrize(
    ("horizon", "initial", "maximum"),
    [("1h", timedelta(seconds=5), timedelta(hours=1)), ("2s", timedelta(seconds=2), timedelta(seconds=2))],
)
def test_a_short_horizon_alone_caps_the_default_backoffs(
    horizon: str, initial: timedelta, maximum: timedelta
) -> None:
    retry = parse_alerting_config(f"retry: {{horizon: {horizon}}}", "alerting.yaml").retry

    assert (retry.initial_backoff, retry.max_backoff) == (initial, maximum)


def test_expectations_are_read_from_the_config() -> None:
    document = GOOD | {"expectations": [{"dag_id": "batch_pipeline_dag", "succeed_by": "04:00"}]}

    config = parse_alerting_config(yaml.safe_dump(document), "alerting.yaml")

    assert [(e.dag_id, e.succeed_by.hour) for e in config.expectations] == [("batch_pipeline_dag", 4)]


def test_a_secret_read_from_a_file_is_used(tmp_path: Path) -> None:
    (tmp_path / "smtp_password").write_text(SECRET + "\n")
    email = EMAIL | {"username": "alerts", "password_file": str(tmp_path / "smtp_password")}

    config = parse_alerting_config(yaml.safe_dump({"receivers": [{"name": "m", "email": email}]}), "a.yaml")

    assert config.receivers[0].email.password.get_secret_value() == SECRET


@pytest.mark.parametrize("content", [" https://h.example/x \n", "https://h.example/x\t\r\n"])
def test_a_webhook_url_file_is_used_without_surrounding_whitespace(content: str, tmp_path: Path) -> None:
    (tmp_path / "url").write_text(content)
    webhook = {"url_file": str(tmp_path / "url"), "secrets": [new_whsec()]}

    config = parse_alerting_config(
        yaml.safe_dump({"receivers": [{"name": "w", "webhook": webhook}]}), "a.yaml"
    )

    assert config.receivers[0].webhook.url.get_secret_value() == "https://h.example/x"


def test_webhook_secrets_from_a_file_are_one_per_line(tmp_path: Path) -> None:
    rotated = [new_whsec(), new_whsec()]
    (tmp_path / "secrets").write_text("\n".join(rotated) + "\n")
    webhook = {"url": "https://h.example/x", "secrets_file": str(tmp_path / "secrets")}

    config = parse_alerting_config(
        yaml.safe_dump({"receivers": [{"name": "w", "webhook": webhook}]}), "a.yaml"
    )

    assert [s.get_secret_value() for s in config.receivers[0].webhook.secrets] == rotated


@pytest.mark.parametrize(
    ("email", "message"),
    [
        (EMAIL | {"password_file": "/nonexistent/secret"}, "receivers[0].email.password_file: cannot read"),
        (EMAIL | {"password": SECRET, "password_file": "FILE"}, "set either password or password_file"),
    ],
)
def test_a_secret_file_problem_names_the_key(email: dict[str, object], message: str, tmp_path: Path) -> None:
    (tmp_path / "password").write_text(SECRET)
    if email.get("password_file") == "FILE":
        email = email | {"password_file": str(tmp_path / "password")}

    with pytest.raises(ConfigError) as raised:
        parse({"receivers": [{"name": "m", "email": email}]})

    assert message in str(raised.value)
    assert SECRET not in str(raised.value)


@pytest.mark.parametrize(
    ("credentials", "message"),
    [
        ({"password": SECRET}, "receivers[0].email: password (or password_file) needs a username"),
        ({"username": "alerts"}, "receivers[0].email: username needs a password or password_file"),
    ],
)
def test_an_smtp_username_and_password_are_set_together_or_not_at_all(
    credentials: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        parse({"receivers": [{"name": "m", "email": EMAIL | credentials}]})

    assert message in str(raised.value)
    assert SECRET not in str(raised.value)


def test_smtp_credentials_in_clear_text_over_the_network_are_refused() -> None:
    with pytest.raises(ConfigError) as raised:
        parse(
            {
                "receivers": [
                    {"name": "m", "email": EMAIL | {"tls": "none", "username": "alerts", "password": SECRET}}
                ]
            }
        )

    assert "receivers[0].email: username and password would cross the network in clear text" in str(
        raised.value
    )
    assert SECRET not in str(raised.value)


@pytest.mark.parametrize(
    ("tls", "smarthost", "port"),
    [
        ("implicit", {"host": "smtp.bank.example"}, 465),
        ("starttls", {"host": "smtp.bank.example"}, 587),
        ("none", {"host": "smtp.bank.example"}, 587),
        ("implicit", {"host": "smtp.bank.example", "port": 587}, 587),
    ],
)
def test_a_smarthost_without_a_port_gets_the_port_of_its_tls_mode(
    tls: str, smarthost: dict[str, object], port: int
) -> None:
    email = {**EMAIL, "smarthost": smarthost, "tls": tls}

    (receiver,) = parse_alerting_config(
        yaml.safe_dump({"receivers": [{"name": "m", "email": email}]}), "a.yaml"
    ).receivers

    assert receiver.email.smarthost.port == port


def test_the_implicit_tls_port_is_not_written_into_a_smarthost_given_as_an_instance() -> None:
    # pydantic does not copy a model instance it is given: setting its port would change it for every
    # configuration sharing it, a STARTTLS one included.
    shared = SmartHost(host="smtp.bank.example")
    implicit = EmailConfig.model_validate({**EMAIL, "smarthost": shared, "tls": "implicit"})
    starttls = EmailConfig.model_validate({**EMAIL, "smarthost": shared, "tls": "starttls"})

    assert (implicit.smarthost.port, starttls.smarthost.port, shared.port) == (465, 587, 587)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "::ffff:127.0.0.1", "localhost."])
def test_smtp_credentials_without_tls_are_accepted_for_a_loopback_relay(host: str) -> None:
    email = {
        **EMAIL,
        "smarthost": {"host": host, "port": 25},
        "tls": "none",
        "username": "a",
        "password": SECRET,
    }

    (receiver,) = parse_alerting_config(
        yaml.safe_dump({"receivers": [{"name": "m", "email": email}]}), "a.yaml"
    ).receivers

    assert receiver.email.username == "a"


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.slack.com:8o8o/services/T0k3n/B/X",
        "https://hooks.slack.com:99999/services/T0k3n/B/X",
        "https://hooks.slack.com:0/services/T0k3n/B/X",
        "https://alerts:T0k3n?x@hooks.bank.example/airflow",
        "https://alerts:T0k3n#x@hooks.bank.example/airflow",
        "https://alerts:T0k3n/x@hooks.bank.example/airflow",
    ],
)
def test_a_webhook_url_without_a_valid_port_is_refused_naming_the_field_without_the_url(url: str) -> None:
    # Accepted, it failed every delivery as an internal error, retried for the whole horizon.
    with pytest.raises(ConfigError) as raised:
        parse({"receivers": [{"name": "w", "webhook": WEBHOOK | {"url": url}}]})

    assert "receivers[0].webhook.url: must be an http(s) URL with a valid port (1-65535)" in str(raised.value)
    assert "T0k3n" not in str(raised.value)


@pytest.mark.parametrize(
    "url",
    [
        "https://alerts:T0k3n\uff20x@hooks.bank.example/airflow",  # a full-width @ in the password
        "https://alerts:T0k3n\u2100@hooks.bank.example/airflow",  # "a/c" in one character
    ],
    ids=["full-width-at", "account-of"],
)
def test_a_webhook_url_urllib_cannot_split_is_refused_naming_the_field_without_the_url(url: str) -> None:
    # urllib's own error quotes the host part of the URL, password included.
    with pytest.raises(ConfigError) as raised:
        parse({"receivers": [{"name": "w", "webhook": WEBHOOK | {"url": url}}]})

    assert "receivers[0].webhook.url: must be an http(s) URL; its host part is not one" in str(raised.value)
    assert "T0k3n" not in str(raised.value)


def test_check_config_refuses_a_webhook_url_file_with_a_bad_port_naming_the_field_without_the_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "hook_url").write_text("https://hooks.slack.com:8o8o/services/T0k3n/B/X\n")
    config_file = tmp_path / "alerting.yaml"
    webhook = {"url_file": str(tmp_path / "hook_url"), "format": "slack"}
    config_file.write_text(yaml.safe_dump({"receivers": [{"name": "slack", "webhook": webhook}]}))
    monkeypatch.setenv("ALERTING_DATA_DIR", str(tmp_path))

    assert main(["check-config", "--config", str(config_file)]) == EX_CONFIG
    error = capsys.readouterr().err
    assert "receivers[0].webhook.url_file: must be an http(s) URL with a valid port" in error
    assert "T0k3n" not in error and "8o8o" not in error


def test_secrets_never_appear_in_errors_or_in_the_printed_config() -> None:
    whsec = new_whsec()
    document = {
        "receivers": [{"name": "w", "webhook": {"url": "https://h.example/T0k3n", "secrets": [whsec]}}]
    }
    config = parse_alerting_config(yaml.safe_dump(document), "a.yaml")
    with pytest.raises(ConfigError) as raised:
        parse(
            document
            | {"route": {"receivers": ["nope"]}}
            | {"receivers": [document["receivers"][0] | {"x": 1}]}
        )

    for text in (repr(config), str(config.model_dump()), str(raised.value)):
        assert whsec not in text and "T0k3n" not in text


@pytest.mark.parametrize(
    ("value", "read_as"),
    [("yes", "a boolean"), ("5", "a number"), ("[prod, on]", "a boolean"), ("1.0", "a number")],
)
def test_a_match_value_yaml_reads_as_no_string_is_refused_saying_to_quote_it(
    value: str, read_as: str
) -> None:
    # Unquoted, `yes` is true and `5` an integer: "Input should be a valid list" did not say what was wrong.
    document = f"route:\n  routes:\n    - match: {{labels.deploy: {value}}}\n"
    with pytest.raises(ConfigError) as raised:
        parse_alerting_config(document, "alerting.yaml")

    assert f"route.routes[0].match.labels.deploy: YAML reads an unquoted value as {read_as}" in str(
        raised.value
    )
    assert "quote it" in str(raised.value)


def test_invalid_yaml_names_the_file_and_line() -> None:
    with pytest.raises(ConfigError, match=r"alerting.yaml: line 2 column \d+ not valid YAML"):
        parse_alerting_config("receivers: []\nroute: receivers: x\n", "alerting.yaml")


SMTP_BLOCK = """\
receivers:
  - name: oncall-email
    email:
      to: [oncall@bank.example]
      from: af@bank.example
      smarthost: {host: smtp.bank.example}
      username: alerts
      password: PASSWORD
"""


@pytest.mark.parametrize(
    ("password", "explanation"),
    [
        ("*Kx9pQ2smtp", "an unquoted value starting with '*' (read as an alias of an anchor not defined)"),
        ("!Kx9pQ2smtp", "an unquoted value starting with '!' (read as a tag that YAML does not know)"),
        ("!Kx9!pQ2smtp", "an unquoted value starting with '!' (read as a tag that YAML does not know)"),
        (
            "&Kx9pQ2smtp [&Kx9pQ2smtp x]",
            "an unquoted value starting with '&' (read as an anchor",
        ),
    ],
)
def test_a_value_yaml_reads_as_an_alias_anchor_or_tag_is_explained_at_its_line_without_quoting_it(
    password: str, explanation: str
) -> None:
    # PyYAML's own message quoted the name: an unquoted password starting with '*' was printed.
    with pytest.raises(ConfigError) as raised:
        parse_alerting_config(SMTP_BLOCK.replace("PASSWORD", password), "alerting.yaml")

    assert re.search(r"alerting.yaml: line 8 column \d+ not valid YAML: ", str(raised.value))
    assert explanation in str(raised.value)
    assert "quote the value" in str(raised.value)
    assert "Kx9" not in str(raised.value)


@pytest.mark.parametrize("value", ["!!int Kx9pQ2smtp", "!!bool Kx9pQ2smtp", '!!float ""'])
def test_a_value_its_explicit_tag_cannot_read_is_a_yaml_error_at_its_line(value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_alerting_config(SMTP_BLOCK.replace("PASSWORD", value), "alerting.yaml")

    assert "alerting.yaml: line 8 column 17 not valid YAML: a value that its tag" in str(raised.value)
    assert "Kx9" not in str(raised.value)


@pytest.mark.parametrize("password", ["2026-02-30", "2026-02-28", "2026-02-28 04:00:00"])
def test_an_unquoted_date_is_read_as_the_text_written(password: str) -> None:
    # A day that cannot exist stopped the start with a ValueError traceback naming no key.
    config = parse_alerting_config(SMTP_BLOCK.replace("PASSWORD", password), "alerting.yaml")

    assert config.receivers[0].email.password.get_secret_value() == password


def test_an_unknown_key_is_not_shown_but_its_place_and_the_settings_there_are() -> None:
    # A secret indented one level too deep is read as a key, which the message used to print.
    whsec = new_whsec()
    with pytest.raises(ConfigError) as raised:
        parse({"receivers": [{"name": "w", "webhook": WEBHOOK | {whsec: None}}]})

    assert (
        "receivers[0].webhook: a key there is not a setting (not shown, in case it is a misplaced value);"
        " the settings there are: url, url_file, format, secrets," in str(raised.value)
    )
    assert whsec not in str(raised.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"retry": {"horizn": "1h"}}, "retry.horizn: not a setting (did you mean 'horizon'?)"),
        (
            {"receivers": [{"name": "m", "email": EMAIL | {"usrname": "alerts"}}]},
            "receivers[0].email.usrname: not a setting (did you mean 'username'?)",
        ),
        (
            {"route": {"routes": [{"recievers": []}]}},
            "route.routes[0].recievers: not a setting (did you mean",
        ),
    ],
)
def test_an_unknown_key_resembling_a_setting_is_named_with_the_setting_it_resembles(
    change: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        parse(GOOD | change)

    assert message in str(raised.value)


def test_a_missing_config_file_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ALERTING_CONFIG_FILE: cannot read"):
        load_alerting_config(load_settings(config_file=tmp_path / "absent.yaml"))


def an_expectation_file(tmp_path: Path, window_hours: int) -> Path:
    config_file = tmp_path / "alerting.yaml"
    expectation = {"dag_id": "batch_pipeline_dag", "succeed_by": "04:00", "window_hours": window_hours}
    config_file.write_text(yaml.safe_dump({"expectations": [expectation]}), encoding="utf-8")
    return config_file


def test_an_expectation_window_longer_than_the_retention_allows_is_refused(tmp_path: Path) -> None:
    settings = load_settings(config_file=an_expectation_file(tmp_path, window_hours=72), retention="3d")

    with pytest.raises(ConfigError, match=r"expectations\[0\]\.window_hours: 72 hours plus a day is longer"):
        load_alerting_config(settings)


def test_an_expectation_window_plus_a_day_within_the_retention_is_accepted(tmp_path: Path) -> None:
    settings = load_settings(config_file=an_expectation_file(tmp_path, window_hours=24), retention="2d")

    assert load_alerting_config(settings).expectations[0].window_hours == 24


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("ALERTING_MAX_BODY_BYTES", "lots", "ALERTING_MAX_BODY_BYTES: Input should be a valid integer"),
        ("ALERTING_DATABASE_URL", "mysql://db/alerts", "ALERTING_DATABASE_URL: use a sqlite"),
        ("ALERTING_DATABASE_URL", "postgresql+asyncpg://u:S3cr3tPw@db/a", "keep the password out of the URL"),
        ("ALERTING_DATABASE_URL", "postgresql+asyncpg://u:S3cr3tPw/x@db/a", "keep the password out"),
        ("ALERTING_DATABASE_URL", "postgresql+asyncpg://u@db/a?password=S3cr3tPw", "keep the password out"),
        ("ALERTING_DATABASE_URL", "postgresql+asyncpg://u@db/a?dsn=postgresql://u:S3cr3tPw@h/a", "keep the"),
        ("ALERTING_DATABASE_URL", "postgresql+asyncpg://u:p@S3cr3tPw:1@h/a", "keep the password out"),
        ("ALERTING_API_KEYS_FILE", "/nonexistent/keys", "ALERTING_API_KEYS_FILE: cannot read"),
        ("ALERTING_RETENTION", "1d", "ALERTING_RETENTION: must be at least 2d"),
        ("ALERTING_RETENTION", "99999999d", "ALERTING_RETENTION: must be at most 36500d"),
        ("ALERTING_DATA_DIR", "/dev/null", "ALERTING_DATA_DIR: /dev/null is not a directory"),
    ],
)
def test_a_bad_environment_variable_is_named(
    variable: str, value: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, value)

    with pytest.raises(ConfigError) as raised:
        load_settings()

    assert message in str(raised.value)
    assert "S3cr3tPw" not in str(raised.value)


def test_a_mistyped_environment_variable_is_refused_naming_the_setting_it_resembles(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ALERTING_RETENTON", "3d")

    with pytest.raises(
        ConfigError, match=r"ALERTING_RETENTON: not a setting .*did you mean ALERTING_RETENTION\?"
    ):
        load_settings()


def test_an_unknown_environment_variable_is_named_without_its_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALERTING_SIGNING_SECRET", "S3cr3tPw")

    with pytest.raises(ConfigError) as raised:
        load_settings()

    assert "ALERTING_SIGNING_SECRET: not a setting of the alert service" in str(raised.value)
    assert "S3cr3tPw" not in str(raised.value)


def test_the_variables_kubernetes_sets_for_the_alert_services_own_service_do_not_stop_the_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A Service named alerting-service (docs/containers.md: run it as a Deployment) gives every pod of the
    # namespace these; the service refused to start naming them.
    for name, value in {
        "ALERTING_SERVICE_SERVICE_HOST": "10.96.0.12",
        "ALERTING_SERVICE_SERVICE_PORT": "9095",
        "ALERTING_SERVICE_SERVICE_PORT_HTTP": "9095",
        "ALERTING_SERVICE_PORT": "tcp://10.96.0.12:9095",
        "ALERTING_SERVICE_PORT_9095_TCP": "tcp://10.96.0.12:9095",
        "ALERTING_SERVICE_PORT_9095_TCP_PROTO": "tcp",
        "ALERTING_SERVICE_PORT_9095_TCP_PORT": "9095",
        "ALERTING_SERVICE_PORT_9095_TCP_ADDR": "10.96.0.12",
        "ALERTING_SERVICE_HOST": "10.96.0.13",
        "ALERTING_PORT": "tcp://10.96.0.13:80",
    }.items():
        monkeypatch.setenv(name, value)

    assert load_settings(data_dir=tmp_path).data_dir == tmp_path


def test_a_port_variable_that_kubernetes_did_not_set_is_still_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ALERTING_PORT", "9095")  # not a setting: the port is serve --port

    with pytest.raises(ConfigError, match="ALERTING_PORT: not a setting"):
        load_settings()


def test_check_config_exits_78_naming_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file = tmp_path / "alerting.yaml"
    config_file.write_text(yaml.safe_dump(GOOD | {"route": {"receivers": ["pager"]}}))
    monkeypatch.setenv("ALERTING_DATA_DIR", str(tmp_path))

    assert main(["check-config", "--config", str(config_file)]) == EX_CONFIG
    assert "route.receivers: unknown receiver 'pager'" in capsys.readouterr().err


def test_check_config_accepts_a_good_config_and_prints_no_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file = tmp_path / "alerting.yaml"
    config_file.write_text(yaml.safe_dump(GOOD))
    monkeypatch.setenv("ALERTING_DATA_DIR", str(tmp_path))

    assert main(["check-config", "--config", str(config_file)]) == 0
    output = capsys.readouterr().out
    assert "oncall-email (email), incident-webhook (webhook)" in output
    assert SECRET not in output
    assert not (tmp_path / "api-keys").exists()  # checking writes nothing
