from django.apps import AppConfig


class CloudTasksAppConfig(AppConfig):
    name = "django_tasks_cloud_tasks"
    verbose_name = "Cloud Tasks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
