from django.urls import include, path

from . import views

urlpatterns = [
    path("", views.index, name="index"),
    path("enqueue/<slug:kind>/", views.enqueue, name="enqueue"),
    path("tasks/", views.recent_tasks, name="recent-tasks"),
    # Cloud Tasks (here: the emulator) POSTs each task back to this endpoint.
    path("cloudtasks/", include("django_tasks_cloud_tasks.urls")),
]
