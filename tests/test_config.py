"""Configuration: OPTIONS, environment variables and the metadata server, resolved and validated."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from django_tasks_cloud_tasks import CloudTasksBackend
from django_tasks_cloud_tasks.config import (
    ENVIRONMENT_VARIABLES,
    LOCAL_HANDLER_HOST,
    LOCAL_LOCATION,
    LOCAL_PROJECT,
    CloudTasksConfig,
)
from tests.servers import BackgroundServer

GCP_VARIABLES = (*ENVIRONMENT_VARIABLES, "GCE_METADATA_ROOT")


class MetadataServer(BackgroundServer):
    """A stand-in for the Google Cloud metadata server: answers the paths in ``values``."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.requests: list[str] = []
        super().__init__(_MetadataHandler)


class _MetadataHandler(BaseHTTPRequestHandler):
    server: MetadataServer

    def do_GET(self) -> None:
        path = self.path.removeprefix("/computeMetadata/v1/")
        self.server.requests.append(path)
        value = self.server.values.get(path)
        flavored = self.headers.get("Metadata-Flavor") == "Google"
        self.send_response(200 if value is not None and flavored else 404)
        self.send_header("Metadata-Flavor", "Google")
        self.send_header("Content-Type", "application/text")
        self.end_headers()
        self.wfile.write((value or "").encode())

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in GCP_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def metadata_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[MetadataServer]:
    with MetadataServer() as server:
        monkeypatch.setenv("GCE_METADATA_HOST", server.host)
        yield server


def build(options: dict[str, Any] | None = None, alias: str = "default") -> CloudTasksConfig:
    params: dict[str, Any] = {"QUEUES": []}
    if options is not None:
        params["OPTIONS"] = options
    return CloudTasksBackend(alias, params).config


EXPLICIT = {
    "CLOUD_TASKS_PROJECT": "my-project",
    "CLOUD_TASKS_LOCATION": "europe-west1",
    "TASK_HANDLER_HOST": "https://app.example.com",
}


def test_explicit_options() -> None:
    config = build(
        {**EXPLICIT, "OIDC_SERVICE_ACCOUNT_EMAIL": "invoker@my-project.iam.gserviceaccount.com"}
    )

    assert config.project == "my-project"
    assert config.location == "europe-west1"
    assert config.handler_url == "https://app.example.com/cloudtasks/execute/"
    assert config.oidc_service_account_email == "invoker@my-project.iam.gserviceaccount.com"
    assert config.oidc_audience == "https://app.example.com"
    assert config.emulator_host is None


def test_options_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "env-project")
    monkeypatch.setenv("CLOUD_TASKS_LOCATION", "us-east1")
    monkeypatch.setenv("SERVICE_URL", "https://env.example.com")

    assert build(EXPLICIT).project == "my-project"
    assert build().project == "env-project"
    assert build().handler_host == "https://env.example.com"


def test_cloud_run_region_is_a_location_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUD_RUN_REGION", "asia-northeast1")

    config = build({"CLOUD_TASKS_PROJECT": "p", "TASK_HANDLER_HOST": "http://localhost:8000"})

    assert config.location == "asia-northeast1"


def test_custom_handler_path_and_audience() -> None:
    config = build({**EXPLICIT, "TASK_HANDLER_PATH": "/jobs/run/", "OIDC_AUDIENCE": "my-aud"})

    assert config.handler_url == "https://app.example.com/jobs/run/"
    assert config.oidc_audience == "my-aud"


def test_emulator_host_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUD_TASKS_EMULATOR_HOST", "localhost:8123")

    assert build(EXPLICIT).emulator_host == "localhost:8123"


def test_on_the_emulator_nothing_else_is_needed_and_the_metadata_server_is_not_asked(
    metadata_server: MetadataServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLOUD_TASKS_EMULATOR_HOST", "127.0.0.1:8123")
    metadata_server.values["project/project-id"] = "cloud-project"

    config = build()

    assert (config.project, config.location) == (LOCAL_PROJECT, LOCAL_LOCATION)
    assert config.handler_host == LOCAL_HANDLER_HOST == "http://127.0.0.1:8000"
    assert config.oidc_service_account_email is None
    assert metadata_server.requests == []


def test_on_the_emulator_options_and_environment_still_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUD_TASKS_EMULATOR_HOST", "127.0.0.1:8123")
    monkeypatch.setenv("SERVICE_URL", "http://127.0.0.1:9000")

    config = build({"CLOUD_TASKS_PROJECT": "mine"})

    assert (config.project, config.location) == ("mine", LOCAL_LOCATION)
    assert config.handler_host == "http://127.0.0.1:9000"


def test_cloud_run_is_detected_from_the_metadata_server(
    metadata_server: MetadataServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("K_SERVICE", "shop")
    metadata_server.values.update(
        {
            "project/project-id": "shop-prod",
            "project/numeric-project-id": "123456789012",
            "instance/region": "projects/123456789012/regions/europe-west4",
            "instance/service-accounts/default/email": "runtime@shop-prod.iam.gserviceaccount.com",
        }
    )

    config = build()

    assert config.project == "shop-prod"
    assert config.location == "europe-west4"
    assert config.handler_host == "https://shop-123456789012.europe-west4.run.app"
    assert config.oidc_service_account_email == "runtime@shop-prod.iam.gserviceaccount.com"
    assert config.oidc_audience == config.handler_host


def test_configuration_is_resolved_once_per_process(
    metadata_server: MetadataServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("K_SERVICE", "cached")
    metadata_server.values.update(
        {
            "project/project-id": "p",
            "project/numeric-project-id": "1",
            "instance/region": "projects/1/regions/us-central1",
            "instance/service-accounts/default/email": "sa@p.iam.gserviceaccount.com",
        }
    )

    first = build()
    lookups = len(metadata_server.requests)
    second = build()

    assert second is first
    assert len(metadata_server.requests) == lookups


def test_explicit_none_turns_off_service_account_detection(
    metadata_server: MetadataServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("K_SERVICE", "svc")

    config = build({**EXPLICIT, "OIDC_SERVICE_ACCOUNT_EMAIL": None})

    assert config.oidc_service_account_email is None
    assert metadata_server.requests == []


def test_app_engine_url_is_built_from_the_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GAE_APPLICATION", "e~gae-project")
    monkeypatch.setenv("GAE_SERVICE", "worker")
    monkeypatch.setenv("CLOUD_TASKS_LOCATION", "us-central1")
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")

    config = build()

    assert config.project == "gae-project"
    assert config.handler_host == "https://worker-dot-gae-project.appspot.com"


def test_nothing_configured_off_google_cloud_fails_fast_naming_the_setting() -> None:
    started = time.monotonic()
    with pytest.raises(ImproperlyConfigured) as excinfo:
        build()

    assert time.monotonic() - started < 1.0
    message = str(excinfo.value)
    assert "TASKS['default']" in message
    # Everything missing at once, as a block to paste, and the way to run locally instead.
    for name in ("CLOUD_TASKS_PROJECT", "CLOUD_TASKS_LOCATION", "TASK_HANDLER_HOST"):
        assert f'"{name}": "' in message
    for variable in ("GOOGLE_CLOUD_PROJECT", "CLOUD_TASKS_LOCATION", "SERVICE_URL"):
        assert f"{variable}=" in message
    assert "CLOUD_TASKS_EMULATOR_HOST=127.0.0.1:8123" in message


def test_only_what_is_missing_is_asked_for() -> None:
    with pytest.raises(ImproperlyConfigured) as excinfo:
        build({"CLOUD_TASKS_PROJECT": "mine", "CLOUD_TASKS_LOCATION": "europe-west1"})

    message = str(excinfo.value)
    assert "could not determine the URL that Cloud Tasks should call" in message
    assert '"TASK_HANDLER_HOST": "' in message
    assert '"CLOUD_TASKS_PROJECT"' not in message


@pytest.mark.parametrize(
    ("typo", "suggestion"),
    [
        ("OIDC_SERVICE_ACOUNT_EMAIL", "OIDC_SERVICE_ACCOUNT_EMAIL"),
        ("store_results", "STORE_RESULTS"),
        ("CLOUD_TASK_PROJECT", "CLOUD_TASKS_PROJECT"),
    ],
    ids=["missing-letter", "lower-case", "singular"],
)
def test_a_misspelt_option_gets_the_closest_valid_name(typo: str, suggestion: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=rf"{typo}' \(did you mean '{suggestion}'\?\)"):
        build({**EXPLICIT, typo: True})


def test_unreachable_metadata_host_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    # 192.0.2.0/24 is reserved for documentation: nothing answers, the connect times out.
    monkeypatch.setenv("GCE_METADATA_HOST", "192.0.2.1")
    started = time.monotonic()

    with pytest.raises(ImproperlyConfigured, match="metadata server did not answer"):
        build()

    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {**EXPLICIT, "OIDC_SERVICE_ACOUNT_EMAIL": "x"},
            "unknown OPTIONS 'OIDC_SERVICE_ACOUNT_EMAIL'",
        ),
        ({**EXPLICIT, "TASK_HANDLER_HOST": "app.example.com"}, "TASK_HANDLER_HOST"),
        ({**EXPLICIT, "TASK_HANDLER_HOST": "https://a.example.com/x/"}, "no path"),
        ({**EXPLICIT, "TASK_HANDLER_PATH": "execute/"}, "must start with '/'"),
        ({**EXPLICIT, "CLOUD_TASKS_PROJECT": 42}, "must be a string"),
        ({**EXPLICIT, "CLOUD_TASKS_PROJECT": "bad project"}, "not a valid Google Cloud project"),
        ({**EXPLICIT, "CLOUD_TASKS_LOCATION": "Europe West"}, "not a valid Cloud Tasks location"),
        ({**EXPLICIT, "OIDC_SERVICE_ACCOUNT_EMAIL": "nobody"}, "not a service account email"),
        ({**EXPLICIT, "ALLOW_UNAUTHENTICATED": "yes"}, "must be True or False"),
        ({**EXPLICIT, "PRIORITY_QUEUES": ["urgent"]}, "PRIORITY_QUEUES must map"),
        ({**EXPLICIT, "PRIORITY_QUEUES": {"urgent_q": 10}}, "not a valid queue id"),
        ({**EXPLICIT, "PRIORITY_QUEUES": {"urgent": "high"}}, "must be an integer"),
        ({**EXPLICIT, "DISPATCH_DEADLINE": 5}, "between 15 and 1800"),
        ({**EXPLICIT, "LEASE": 0.5}, "LEASE 0.5 must be a number of seconds"),
        ({**EXPLICIT, "LEASE": "15"}, "LEASE '15' must be a number of seconds"),
        ({**EXPLICIT, "LEASE": 10, "LEASE_RENEWAL_INTERVAL": 6}, "at most half the LEASE"),
        ({**EXPLICIT, "LEASE_RENEWAL_INTERVAL": 0.01}, "LEASE_RENEWAL_INTERVAL 0.01"),
        ({**EXPLICIT, "CLOUD_TASKS_LOCATION": None}, "CLOUD_TASKS_LOCATION"),
        ({**EXPLICIT, "TASK_HANDLER_HOST": None}, "SERVICE_URL"),
    ],
)
def test_bad_configuration_names_the_setting(
    options: dict[str, Any], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")

    with pytest.raises(ImproperlyConfigured, match=message.replace("(", r"\(")):
        build(options)


@pytest.mark.parametrize(
    ("options", "lease", "interval"),
    [
        ({}, 15, 5),
        ({"LEASE": 6}, 6, 2),  # A third of a short lease.
        ({"LEASE": timedelta(minutes=1), "LEASE_RENEWAL_INTERVAL": 20}, 60, 20),
    ],
    ids=["defaults", "short-lease", "both-set"],
)
def test_leases_default_to_15_s_renewed_every_5_s_or_a_third_of_the_lease(
    options: dict[str, Any], lease: float, interval: float
) -> None:
    config = build({**EXPLICIT, **options})

    assert config.lease == timedelta(seconds=lease)
    assert config.lease_renewal_interval == timedelta(seconds=interval)


def test_priority_queues_pick_the_highest_band_reached() -> None:
    config = build({**EXPLICIT, "PRIORITY_QUEUES": {"urgent": 50, "soon": 10}})

    assert config.cloud_queue_for("default", 100) == "urgent"
    assert config.cloud_queue_for("default", 50) == "urgent"
    assert config.cloud_queue_for("default", 10) == "soon"
    assert config.cloud_queue_for("emails", 9) == "emails"
