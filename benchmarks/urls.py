from functools import cache

from django.http import HttpRequest, JsonResponse
from django.tasks import task_backends
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt

from django_tasks_cloud_tasks.auth import Policy, Refused, authenticate


@csrf_exempt  # As the execute view is: Cloud Tasks sends no CSRF token.
def bare(request: HttpRequest) -> JsonResponse:
    """The floor for the execute view: Django answering JSON and doing nothing else."""
    return JsonResponse({"status": "success"})


@cache  # As the execute view keeps its policy.
def policy() -> Policy:
    return Policy.of({"default": task_backends["default"].config})


@csrf_exempt
def authenticated(request: HttpRequest) -> JsonResponse:
    """The bare view plus the execute view's authentication alone: what verifying a token costs."""
    try:
        authenticate(request, policy())
    except Refused as refusal:
        return JsonResponse({"status": "refused", "reason": refusal.reason}, status=refusal.status)
    return JsonResponse({"status": "success"})


urlpatterns = [
    path("cloudtasks/", include("django_tasks_cloud_tasks.urls")),
    path("bare/", bare),
    path("authenticated/", authenticated),
]
