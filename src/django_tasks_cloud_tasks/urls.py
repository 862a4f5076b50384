"""Mount under ``cloudtasks/``:

path("cloudtasks/", include("django_tasks_cloud_tasks.urls"))
"""

from django.urls import path

from . import views

app_name = "django_tasks_cloud_tasks"

urlpatterns = [
    path("execute/", views.execute, name="execute"),
]
