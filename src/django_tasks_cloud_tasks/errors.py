"""Turns Cloud Tasks API failures into errors that say which queue and what to do."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.core.exceptions import ImproperlyConfigured

from .config import CloudTasksConfig
from .exceptions import CloudTasksError


@contextmanager
def enqueue_errors(config: CloudTasksConfig, queue_id: str) -> Iterator[None]:
    """Re-raise a failed Cloud Tasks call as an error a user can act on."""
    try:
        yield
    except Exception as exc:
        error = _translate(exc, config, queue_id)
        if error is None:
            raise
        raise error from exc


def _translate(exc: Exception, config: CloudTasksConfig, queue_id: str) -> Exception | None:
    # Imported here: google.api_core costs ~0.2 s to import and is only needed once a call failed.
    from google.api_core import exceptions as api
    from google.auth.exceptions import DefaultCredentialsError

    queue = config.queue_path(queue_id)
    if isinstance(exc, DefaultCredentialsError):
        return ImproperlyConfigured(
            "No Google Cloud credentials were found to create Cloud Tasks tasks. On Cloud Run and "
            "App Engine they come from the runtime service account; elsewhere run `gcloud auth "
            "application-default login`, or set CLOUD_TASKS_EMULATOR_HOST to use the local "
            f"emulator. ({exc})"
        )
    if isinstance(exc, api.NotFound | api.FailedPrecondition):
        fix = (
            f"start the emulator with `python manage.py cloudtasks_emulator --queue {queue_id}`"
            if config.emulator_host
            else f"create it with `gcloud tasks queues create {queue_id} "
            f"--location={config.location} --project={config.project}`"
        )
        message = f"Cloud Tasks queue {queue} does not exist: {fix}."
    elif isinstance(exc, api.ServiceUnavailable | api.DeadlineExceeded | api.RetryError):
        if config.emulator_host:
            message = (
                f"The Cloud Tasks emulator at {config.emulator_host} (CLOUD_TASKS_EMULATOR_HOST) "
                f"did not answer, so no task was added to {queue}: start it with `python manage.py "
                "cloudtasks_emulator`, or unset CLOUD_TASKS_EMULATOR_HOST to use Google Cloud."
            )
        else:
            message = (
                f"Cloud Tasks is unavailable, so no task was added to {queue}; "
                f"try again later. ({exc})"
            )
    elif isinstance(exc, api.PermissionDenied | api.Unauthenticated):
        message = (
            f"Permission denied creating a task in {queue}: grant the runtime service account "
            "roles/cloudtasks.enqueuer, and roles/iam.serviceAccountUser on the OIDC service "
            f"account when tasks carry OIDC tokens. ({exc.message})"
        )
    elif isinstance(exc, api.GoogleAPIError):
        message = f"Cloud Tasks refused a task for {queue}: {exc}"
    else:
        return None
    return CloudTasksError(message, queue=queue)
