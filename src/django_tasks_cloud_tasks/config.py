"""One validated configuration per backend alias.

It is resolved from OPTIONS, the environment and the metadata server. With
``CLOUD_TASKS_EMULATOR_HOST`` set, the metadata server is not asked: what OPTIONS and the
environment leave open takes the local defaults below, which the emulator command uses too, so a
new project runs on a laptop with that one variable. Off Google Cloud without it, everything
missing is reported in one message with a block to paste.

Django builds a backend instance per thread and per async context, so the resolved configuration is
cached per process, keyed by everything it was resolved from: settings changes (``TASKS``) and
environment changes both produce a new configuration, while repeated construction costs a lookup.
"""

from __future__ import annotations

import difflib
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from . import metadata
from .declarations import (
    DeclarationError,
    QueueDeclaration,
    ScheduleDeclaration,
    parse_queues,
    parse_schedules,
)
from .limits import QUEUE_ID

DEFAULT_HANDLER_PATH = "/cloudtasks/execute/"
DEFAULT_SCHEDULE_PATH = "/cloudtasks/schedule/"
# Cloud Tasks accepts dispatch deadlines for HTTP targets in this range.
MIN_DISPATCH_DEADLINE = timedelta(seconds=15)
MAX_DISPATCH_DEADLINE = timedelta(minutes=30)
# What Cloud Tasks waits for an HTTP target when the task sets no dispatch deadline.
DEFAULT_DISPATCH_DEADLINE = timedelta(minutes=10)
# How long enqueue() may take, retries included: short enough for a web request to stay
# responsive, long enough for a few retries across a blip of a second or two.
DEFAULT_ENQUEUE_DEADLINE = 10.0
MIN_ENQUEUE_DEADLINE = 0.5
MAX_ENQUEUE_DEADLINE = 600.0
# A running attempt's claim on its result row (STORE_RESULTS) lasts LEASE and is renewed every
# LEASE_RENEWAL_INTERVAL while the task runs: a delivery that finds the lease lapsed takes the task
# over, so a killed instance's tasks run again within about LEASE. Three renewals per lease: two
# may fail (a database restart, a stalled process) before another attempt may take over.
DEFAULT_LEASE = timedelta(seconds=15)
DEFAULT_LEASE_RENEWAL_INTERVAL = timedelta(seconds=5)
MIN_LEASE_RENEWAL_INTERVAL = timedelta(seconds=0.1)
_APP = "django_tasks_cloud_tasks"
# On the emulator: a project and location that need no Google Cloud account, and where
# ``manage.py runserver`` listens by default.
LOCAL_PROJECT = "local-project"
LOCAL_LOCATION = "us-central1"
LOCAL_HANDLER_HOST = "http://127.0.0.1:8000"

ENVIRONMENT_VARIABLES = (
    "GOOGLE_CLOUD_PROJECT",
    "CLOUD_TASKS_LOCATION",
    "CLOUD_RUN_REGION",
    "SERVICE_URL",
    "K_SERVICE",
    "GAE_SERVICE",
    "GAE_APPLICATION",
    "CLOUD_TASKS_EMULATOR_HOST",
    "GCE_METADATA_HOST",
)
OPTION_NAMES = frozenset(
    {
        "CLOUD_TASKS_PROJECT",
        "CLOUD_TASKS_LOCATION",
        "TASK_HANDLER_HOST",
        "TASK_HANDLER_PATH",
        "OIDC_SERVICE_ACCOUNT_EMAIL",
        "OIDC_AUDIENCE",
        "ALLOW_UNAUTHENTICATED",
        "PRIORITY_QUEUES",
        "DISPATCH_DEADLINE",
        "STORE_RESULTS",
        "RESPONSE_ERROR_MESSAGES",
        "CLOUD_TASKS_QUEUES",
        "SCHEDULES",
        "SCHEDULE_HANDLER_PATH",
        "SCHEDULER_LOCATION",
        "ENQUEUE_DEADLINE",
        "NAMED_TASKS",
        "ENQUEUE_ON_COMMIT",
        "LEASE",
        "LEASE_RENEWAL_INTERVAL",
    }
)
_PROJECT_ID = re.compile(r"[A-Za-z0-9:.-]+")
_LOCATION = re.compile(r"[a-z0-9-]+")


@dataclass(frozen=True, slots=True)
class CloudTasksConfig:
    """Everything the backend and the execute view need, resolved and validated."""

    alias: str
    project: str
    location: str
    handler_host: str
    handler_path: str
    oidc_service_account_email: str | None
    oidc_audience: str
    allow_unauthenticated: bool
    # (minimum priority, Cloud Tasks queue id), highest threshold first.
    priority_queues: tuple[tuple[int, str], ...]
    dispatch_deadline: timedelta | None
    emulator_host: str | None
    store_results: bool
    # Seconds that creating a task may take, retries included.
    enqueue_deadline: float
    # Whether tasks are named after their result id, which makes retries safe.
    named_tasks: bool
    # Whether enqueue() inside transaction.atomic() waits for the commit, and of which database
    # (None: the result store's, or "default" without the store).
    enqueue_on_commit: bool
    on_commit_database: str | None
    # Whether the execute view's error answers carry the exception's message, not only its class.
    response_error_messages: bool = False
    # Declared in CLOUD_TASKS_QUEUES and SCHEDULES (see ``declarations.py``).
    queues: tuple[QueueDeclaration, ...] = ()
    schedules: tuple[ScheduleDeclaration, ...] = ()
    schedule_handler_path: str = DEFAULT_SCHEDULE_PATH
    scheduler_location: str = ""
    # How long a running attempt's claim lasts unless renewed, and how often it is renewed.
    lease: timedelta = DEFAULT_LEASE
    lease_renewal_interval: timedelta = DEFAULT_LEASE_RENEWAL_INTERVAL

    @property
    def attempt_deadline(self) -> timedelta:
        """How long Cloud Tasks waits for one attempt before it counts as failed."""
        return self.dispatch_deadline or DEFAULT_DISPATCH_DEADLINE

    @property
    def handler_url(self) -> str:
        return self.handler_host + self.handler_path

    @property
    def location_path(self) -> str:
        return f"projects/{self.project}/locations/{self.location}"

    def queue_path(self, queue_id: str) -> str:
        return f"{self.location_path}/queues/{queue_id}"

    @property
    def scheduler_location_path(self) -> str:
        return f"projects/{self.project}/locations/{self.scheduler_location or self.location}"

    def schedule_url(self, name: str) -> str:
        """Where Cloud Scheduler POSTs when schedule ``name`` is due."""
        return f"{self.handler_host}{self.schedule_handler_path}{name}/"

    def max_attempts_for(self, queue_id: str) -> int | None:
        """The ``max_attempts`` declared for Cloud Tasks queue ``queue_id`` (-1: unlimited).

        ``None`` when the queue's retry policy is not declared here, so this process cannot
        know it (Cloud Tasks' default is 100).
        """
        for queue in self.queues:
            if queue.queue_id == queue_id:
                return queue.max_attempts
        return None

    def cloud_queue_for(self, queue_name: str, priority: int) -> str:
        """The Cloud Tasks queue a task goes to: its priority band's, else its own queue."""
        for threshold, queue_id in self.priority_queues:
            if priority >= threshold:
                return queue_id
        return queue_name


_cache: dict[tuple[Any, ...], CloudTasksConfig] = {}
_cache_lock = threading.Lock()


def resolve(alias: str, options: Mapping[str, Any]) -> CloudTasksConfig:
    """Return the configuration of backend ``alias``, resolving it once per process."""
    key = (alias, _freeze(options), tuple(os.environ.get(name) for name in ENVIRONMENT_VARIABLES))
    config = _cache.get(key)
    if config is None:
        config = _Resolver(alias, options).resolve()
        with _cache_lock:
            _cache[key] = config
    return config


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, list | tuple | set | frozenset):
        return tuple(_freeze(v) for v in value)
    # With its type: True == 1 and hash(True) == hash(1), but they are different settings.
    return type(value), value


class _Resolver:
    def __init__(self, alias: str, options: Mapping[str, Any]) -> None:
        self.alias = alias
        self.options = options
        self.env = os.environ
        self.metadata_errors: list[str] = []
        self.on_emulator = bool(self.env.get("CLOUD_TASKS_EMULATOR_HOST"))

    def resolve(self) -> CloudTasksConfig:
        unknown = sorted(set(self.options) - OPTION_NAMES)
        if unknown:
            raise self.error(
                f"unknown OPTIONS {', '.join(map(_with_suggestion, unknown))}. "
                f"Valid options are {', '.join(sorted(OPTION_NAMES))}."
            )
        emulator_host = self.env.get("CLOUD_TASKS_EMULATOR_HOST") or None
        project = self.project()
        location = self.location()
        handler_host = self.handler_host(project)
        if not (project and location and handler_host):
            raise self.missing(project=project, location=location, handler_host=handler_host)
        email = self.service_account_email(on_emulator=self.on_emulator)
        on_commit, on_commit_database = self.enqueue_on_commit()
        lease, lease_renewal_interval = self.lease()
        return CloudTasksConfig(
            alias=self.alias,
            project=project,
            location=location,
            handler_host=handler_host,
            handler_path=self.handler_path(),
            oidc_service_account_email=email,
            oidc_audience=self.audience(handler_host),
            allow_unauthenticated=self.boolean("ALLOW_UNAUTHENTICATED"),
            priority_queues=self.priority_queues(),
            dispatch_deadline=self.dispatch_deadline(),
            emulator_host=emulator_host,
            store_results=self.store_results(),
            response_error_messages=self.boolean("RESPONSE_ERROR_MESSAGES"),
            queues=self.declared(parse_queues, "CLOUD_TASKS_QUEUES"),
            schedules=self.declared(parse_schedules, "SCHEDULES"),
            schedule_handler_path=self.schedule_handler_path(),
            scheduler_location=self.scheduler_location(location),
            enqueue_deadline=self.enqueue_deadline(),
            named_tasks=self.boolean("NAMED_TASKS", default=True),
            enqueue_on_commit=on_commit,
            on_commit_database=on_commit_database,
            lease=lease,
            lease_renewal_interval=lease_renewal_interval,
        )

    def error(self, message: str) -> ImproperlyConfigured:
        return ImproperlyConfigured(f"TASKS[{self.alias!r}] (CloudTasksBackend): {message}")

    def option(self, name: str) -> Any:
        value = self.options.get(name)
        if value is not None and not isinstance(value, str):
            raise self.error(f"OPTIONS[{name!r}] must be a string, not {type(value).__name__}.")
        return value or None

    def metadata(self, path: str) -> str | None:
        if self.on_emulator:
            return None  # Local development: Google Cloud's facts do not apply.
        try:
            return metadata.read(path)
        except metadata.MetadataUnavailable as exc:
            self.metadata_errors.append(str(exc))
            return None

    def missing(
        self, *, project: str | None, location: str | None, handler_host: str | None
    ) -> ImproperlyConfigured:
        """Everything that could not be determined, in one message with a block to paste."""
        lacking = [
            (what, option, variable, example)
            for value, what, option, variable, example in (
                (project, "the Google Cloud project", "CLOUD_TASKS_PROJECT",
                 "GOOGLE_CLOUD_PROJECT", "my-project"),
                (location, "the Cloud Tasks location", "CLOUD_TASKS_LOCATION",
                 "CLOUD_TASKS_LOCATION", "us-central1"),
                (handler_host, "the URL that Cloud Tasks should call", "TASK_HANDLER_HOST",
                 "SERVICE_URL", "https://my-service-123456789.us-central1.run.app"),
            )
            if not value
        ]  # fmt: skip
        whats = [what for what, *_ in lacking]
        listed = ", ".join(whats[:-1]) + " and " + whats[-1] if len(whats) > 1 else whats[0]
        reason = ""
        if self.metadata_errors:
            reason = f" The metadata server did not answer: {self.metadata_errors[0]}."
        options = "".join(f'\n        "{option}": "{ex}",' for _, option, _, ex in lacking)
        variables = " ".join(f"{variable}=..." for _, _, variable, _ in lacking)
        return self.error(
            f"could not determine {listed} (not on Cloud Run or App Engine).{reason}\n"
            "For local development, set CLOUD_TASKS_EMULATOR_HOST=127.0.0.1:8123 in the "
            "environment (and run manage.py cloudtasks_emulator): local defaults then apply.\n"
            f"Otherwise set the environment variables {variables}, or add to "
            f"TASKS[{self.alias!r}]:\n"
            f'    "OPTIONS": {{{options}\n    }},'
        )

    def local_default(self, value: str) -> str | None:
        return value if self.on_emulator else None

    def project(self) -> str | None:
        project = (
            self.option("CLOUD_TASKS_PROJECT")
            or self.env.get("GOOGLE_CLOUD_PROJECT")
            or _app_engine_project(self.env.get("GAE_APPLICATION"))
            or self.metadata("project/project-id")
            or self.local_default(LOCAL_PROJECT)
        )
        if not project:
            return None
        if not _PROJECT_ID.fullmatch(project):
            raise self.error(f"{project!r} is not a valid Google Cloud project id.")
        return project

    def location(self) -> str | None:
        location = (
            self.option("CLOUD_TASKS_LOCATION")
            or self.env.get("CLOUD_TASKS_LOCATION")
            or self.env.get("CLOUD_RUN_REGION")
            or self.region()
            or self.local_default(LOCAL_LOCATION)
        )
        if not location:
            return None
        if not _LOCATION.fullmatch(location):
            raise self.error(
                f"{location!r} is not a valid Cloud Tasks location (e.g. 'us-central1')."
            )
        return location

    def region(self) -> str | None:
        # The metadata server answers "projects/123456789/regions/us-central1".
        region = self.metadata("instance/region")
        return region.rsplit("/", 1)[-1] if region else None

    def handler_host(self, project: str | None) -> str | None:
        host = (
            self.option("TASK_HANDLER_HOST")
            or self.env.get("SERVICE_URL")
            or self.cloud_run_url()
            or (project and _app_engine_url(self.env.get("GAE_SERVICE"), project))
            or self.local_default(LOCAL_HANDLER_HOST)
        )
        if not host:
            return None
        parts = urlsplit(host)
        if parts.scheme not in {"http", "https"} or not parts.netloc or parts.path.strip("/"):
            raise self.error(
                f"TASK_HANDLER_HOST {host!r} must be a base URL such as "
                "'https://my-service-123456789.us-central1.run.app' (scheme and host, no path; "
                "set the path with TASK_HANDLER_PATH)."
            )
        return f"{parts.scheme}://{parts.netloc}"

    def cloud_run_url(self) -> str | None:
        # Cloud Run's deterministic URL uses the project *number* and the service's region, which
        # only the metadata server knows (Cloud Run sets no region variable).
        service = self.env.get("K_SERVICE")
        if not service:
            return None
        number = self.metadata("project/numeric-project-id")
        region = self.region()
        if not (number and region):
            return None
        return f"https://{service}-{number}.{region}.run.app"

    def handler_path(self) -> str:
        return self.path("TASK_HANDLER_PATH", DEFAULT_HANDLER_PATH)

    def path(self, name: str, default: str) -> str:
        path = self.option(name) or default
        if not path.startswith("/"):
            raise self.error(f"{name} {path!r} must start with '/'.")
        return str(path)

    def schedule_handler_path(self) -> str:
        path = self.path("SCHEDULE_HANDLER_PATH", DEFAULT_SCHEDULE_PATH)
        if not path.endswith("/"):
            raise self.error(
                f"SCHEDULE_HANDLER_PATH {path!r} must end with '/': the schedule's name follows it."
            )
        return path

    def declared[T](self, parse: Callable[[object], T], name: str) -> T:
        try:
            return parse(self.options.get(name))
        except DeclarationError as exc:
            raise self.error(str(exc)) from None

    def scheduler_location(self, location: str) -> str:
        scheduler_location: str = self.option("SCHEDULER_LOCATION") or location
        if not _LOCATION.fullmatch(scheduler_location):
            raise self.error(
                f"SCHEDULER_LOCATION {scheduler_location!r} is not a valid location "
                "(e.g. 'us-central1')."
            )
        return scheduler_location

    def service_account_email(self, *, on_emulator: bool) -> str | None:
        if "OIDC_SERVICE_ACCOUNT_EMAIL" in self.options:
            email = self.option("OIDC_SERVICE_ACCOUNT_EMAIL")
            if email and "@" not in email:
                raise self.error(
                    f"OIDC_SERVICE_ACCOUNT_EMAIL {email!r} is not a service account email."
                )
            return str(email) if email else None
        # On Cloud Run and App Engine the runtime service account signs tokens for its own tasks.
        # Locally (emulator) nothing is guessed: a developer's tasks carry no token unless asked.
        on_google_cloud = any(self.env.get(v) for v in ("K_SERVICE", "GAE_SERVICE"))
        if on_emulator or not on_google_cloud:
            return None
        return self.metadata("instance/service-accounts/default/email")

    def audience(self, handler_host: str) -> str:
        audience: str = self.option("OIDC_AUDIENCE") or handler_host
        return audience

    def boolean(self, name: str, *, default: bool = False) -> bool:
        value = self.options.get(name, default)
        if not isinstance(value, bool):
            raise self.error(f"OPTIONS[{name!r}] must be True or False, not {value!r}.")
        return value

    def store_results(self) -> bool:
        store = self.boolean("STORE_RESULTS")
        # Checked here rather than at the first enqueue, whose error would not name the option.
        if store and not any(
            app == _APP or app.startswith(f"{_APP}.apps.") for app in settings.INSTALLED_APPS
        ):
            raise self.error(
                f"STORE_RESULTS keeps results in a database table: add {_APP!r} to "
                "INSTALLED_APPS and run manage.py migrate."
            )
        return store

    def priority_queues(self) -> tuple[tuple[int, str], ...]:
        bands = self.options.get("PRIORITY_QUEUES") or {}
        example = "{'high-priority': 50}"
        if not isinstance(bands, Mapping):
            raise self.error(
                f"PRIORITY_QUEUES must map a Cloud Tasks queue id to the minimum task priority "
                f"it receives, e.g. {example}."
            )
        parsed = []
        for queue_id, threshold in bands.items():
            if not (isinstance(queue_id, str) and QUEUE_ID.fullmatch(queue_id)):
                raise self.error(f"PRIORITY_QUEUES key {queue_id!r} is not a valid queue id.")
            if not isinstance(threshold, int) or isinstance(threshold, bool):
                raise self.error(
                    f"PRIORITY_QUEUES[{queue_id!r}] must be an integer priority, e.g. {example}."
                )
            parsed.append((threshold, queue_id))
        return tuple(sorted(parsed, reverse=True))

    def dispatch_deadline(self) -> timedelta | None:
        value = self.options.get("DISPATCH_DEADLINE")
        if value is None:
            return None
        deadline = _as_timedelta(value)
        if deadline is None or not MIN_DISPATCH_DEADLINE <= deadline <= MAX_DISPATCH_DEADLINE:
            raise self.error(
                f"DISPATCH_DEADLINE {value!r} must be a number of seconds (or a timedelta) "
                "between 15 and 1800."
            )
        return deadline

    def lease(self) -> tuple[timedelta, timedelta]:
        value = self.options.get("LEASE", DEFAULT_LEASE)
        lease = _as_timedelta(value)
        if lease is None or not timedelta(seconds=1) <= lease <= MAX_DISPATCH_DEADLINE:
            raise self.error(
                f"LEASE {value!r} must be a number of seconds (or a timedelta) between 1 and 1800."
            )
        value = self.options.get("LEASE_RENEWAL_INTERVAL")
        if value is None:
            return lease, min(DEFAULT_LEASE_RENEWAL_INTERVAL, lease / 3)
        interval = _as_timedelta(value)
        if interval is None or not MIN_LEASE_RENEWAL_INTERVAL <= interval <= lease / 2:
            raise self.error(
                f"LEASE_RENEWAL_INTERVAL {value!r} must be a number of seconds (or a timedelta) "
                f"of at least 0.1 and at most half the LEASE ({lease.total_seconds():g} s), so "
                "that one failed renewal does not let the lease lapse."
            )
        return lease, interval

    def enqueue_deadline(self) -> float:
        value = self.options.get("ENQUEUE_DEADLINE", DEFAULT_ENQUEUE_DEADLINE)
        deadline = _as_timedelta(value)
        seconds = deadline.total_seconds() if deadline is not None else None
        if seconds is None or not MIN_ENQUEUE_DEADLINE <= seconds <= MAX_ENQUEUE_DEADLINE:
            raise self.error(
                f"ENQUEUE_DEADLINE {value!r} must be a number of seconds (or a timedelta) "
                f"between {MIN_ENQUEUE_DEADLINE:g} and {MAX_ENQUEUE_DEADLINE:g}."
            )
        return seconds

    def enqueue_on_commit(self) -> tuple[bool, str | None]:
        value = self.options.get("ENQUEUE_ON_COMMIT", False)
        if isinstance(value, bool):
            return value, None
        if isinstance(value, str) and value in settings.DATABASES:
            return True, value
        raise self.error(
            f"ENQUEUE_ON_COMMIT {value!r} must be True (wait for the commit of the result "
            "store's database, or 'default'), False, or the alias of a database in DATABASES "
            f"({', '.join(map(repr, settings.DATABASES))})."
        )


def _with_suggestion(name: str) -> str:
    close = difflib.get_close_matches(name.upper(), OPTION_NAMES, n=1, cutoff=0.6)
    return f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name)


def _as_timedelta(value: object) -> timedelta | None:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    return None


def _app_engine_project(application: str | None) -> str | None:
    # GAE_APPLICATION is the project id behind a region prefix, e.g. "s~my-project".
    return application.partition("~")[2] or application if application else None


def _app_engine_url(service: str | None, project: str) -> str | None:
    if not service:
        return None
    if service == "default":
        return f"https://{project}.appspot.com"
    return f"https://{service}-dot-{project}.appspot.com"
