import json
from functools import cache
from typing import cast

from django.http import HttpRequest, JsonResponse
from django.tasks import task_backends
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt

from benchmarks.tasks import noop
from django_tasks_cloud_tasks import CloudTasksBackend, execution, oidc
from django_tasks_cloud_tasks.auth import Policy, authenticate
from django_tasks_cloud_tasks.exceptions import Refused
from django_tasks_cloud_tasks.payload import Payload


@csrf_exempt  # As the execute view is: Cloud Tasks sends no CSRF token.
def bare(request: HttpRequest) -> JsonResponse:
    """The floor for the execute view: Django answering JSON and doing nothing else."""
    return JsonResponse({"status": "success"})


# Kept per process, as the execute view keeps its backends and their policy.
@cache
def backend() -> CloudTasksBackend:
    return cast(CloudTasksBackend, task_backends["default"])


@cache
def policy() -> Policy:
    return Policy.of({"default": backend().config})


@csrf_exempt
def authenticated(request: HttpRequest) -> JsonResponse:
    """The bare view plus the execute view's authentication alone: what verifying a token costs."""
    try:
        authenticate(request, policy())
    except Refused as refusal:
        return JsonResponse({"status": "refused", "reason": refusal.reason}, status=refusal.status)
    return JsonResponse({"status": "success"})


@csrf_exempt
def verify_and_run(request: HttpRequest) -> JsonResponse:
    """The least any execute view with OIDC must do, and no more: check the token's signature
    and lifetime, parse the body, run the task as Django does (a ``TaskResult``, the
    ``task_started`` and ``task_finished`` signals) and answer. It skips every check that turns a
    bad request into a 4xx: the body's fields, the token's identity, the backend, the task lookup
    and the arguments. Not a view to deploy: a bound on what any implementation can reach.
    """
    token = request.META["HTTP_AUTHORIZATION"].partition(" ")[2]
    oidc.verify(token, oidc.emulator_issuer(str(backend().config.emulator_host)))
    return run_only(request)


@csrf_exempt
def run_only(request: HttpRequest) -> JsonResponse:
    """The least any execute view must do without authentication: ``verify_and_run`` without the
    token, for the execute view's figure without OIDC. A bound too, not a view to deploy."""
    payload = Payload(**{**json.loads(request.body), "enqueued_at": None})
    sender = type(backend())
    started = execution.start(sender, noop, payload, execution.Attempt(number=1))
    return JsonResponse({"status": "success", "task_id": execution.run(sender, started).result.id})


urlpatterns = [
    path("cloudtasks/", include("django_tasks_cloud_tasks.urls")),
    path("bare/", bare),
    path("authenticated/", authenticated),
    path("verify-and-run/", verify_and_run),
    path("run/", run_only),
]
