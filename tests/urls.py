import json

from django.contrib import admin
from django.http import HttpRequest, JsonResponse
from django.urls import include, path

from django_tasks_cloud_tasks import Call, enqueue_many
from tests import tasks


def bare(request: HttpRequest) -> JsonResponse:
    """A minimal JSON view: the floor the benchmark compares the execute view against."""
    return JsonResponse({"status": "success"})


def enqueue(request: HttpRequest, name: str) -> JsonResponse:
    """Enqueues ``tests.tasks.NAME`` with the JSON body's ``args``, or each of its ``many``."""
    task = getattr(tasks, name)
    body = json.loads(request.body or b"{}")
    if "many" in body:
        results = enqueue_many(task, [Call(*args) for args in body["many"]])
    else:
        results = [task.enqueue(*body.get("args", []))]
    return JsonResponse({"task_ids": [result.id for result in results]})


urlpatterns = [
    path("enqueue/<str:name>/", enqueue),
    path("cloudtasks/", include("django_tasks_cloud_tasks.urls")),
    path("bare/", bare),
    path("admin/", admin.site.urls),
]
