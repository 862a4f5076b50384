from django.contrib import admin
from django.http import HttpRequest, JsonResponse
from django.urls import include, path


def bare(request: HttpRequest) -> JsonResponse:
    """A minimal JSON view: the floor the benchmark compares the execute view against."""
    return JsonResponse({"status": "success"})


urlpatterns = [
    path("cloudtasks/", include("django_tasks_cloud_tasks.urls")),
    path("bare/", bare),
    path("admin/", admin.site.urls),
]
