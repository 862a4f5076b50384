from django.http import HttpRequest, JsonResponse
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt


@csrf_exempt  # As the execute view is: Cloud Tasks sends no CSRF token.
def bare(request: HttpRequest) -> JsonResponse:
    """The floor for the execute view: Django answering JSON and doing nothing else."""
    return JsonResponse({"status": "success"})


urlpatterns = [
    path("cloudtasks/", include("django_tasks_cloud_tasks.urls")),
    path("bare/", bare),
]
