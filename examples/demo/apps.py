from django.apps import AppConfig


class DemoConfig(AppConfig):
    name = "demo"

    def ready(self) -> None:
        from django.tasks.signals import task_finished

        from .outcomes import log_outcome

        task_finished.connect(log_outcome, dispatch_uid="demo.log_outcome")
