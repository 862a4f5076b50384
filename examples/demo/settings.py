"""Settings of the demo: a local project whose tasks go through the Cloud Tasks emulator.

Environment (all optional):
    GOOGLE_CLOUD_PROJECT   project of the queues (default demo-project)
    CLOUD_TASKS_LOCATION   location of the queues (default us-central1)
    SERVICE_URL            base URL Cloud Tasks calls back (default http://127.0.0.1:8000)
    DEMO_DATABASE          SQLite file (default examples/db.sqlite3)
    CLOUD_TASKS_EMULATOR_HOST  host:port of the emulator, set by scripts/demo
"""

import logging
import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

# A local demo only: never deploy these two settings.
SECRET_KEY = "demo-only-not-secret"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.staticfiles",
    "django_tasks_cloud_tasks",
    "demo",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]
ROOT_URLCONF = "demo.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]
WSGI_APPLICATION = "demo.wsgi.application"
ASGI_APPLICATION = "demo.asgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DEMO_DATABASE") or BASE_DIR / "db.sqlite3",
        # The page polls while task deliveries write results: wait for the lock, don't fail.
        "OPTIONS": {"timeout": 20},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"

TASKS = {
    "default": {
        "BACKEND": "django_tasks_cloud_tasks.CloudTasksBackend",
        "QUEUES": [],
        "OPTIONS": {
            "CLOUD_TASKS_PROJECT": os.environ.get("GOOGLE_CLOUD_PROJECT", "demo-project"),
            "CLOUD_TASKS_LOCATION": os.environ.get("CLOUD_TASKS_LOCATION", "us-central1"),
            "TASK_HANDLER_HOST": os.environ.get("SERVICE_URL", "http://127.0.0.1:8000"),
            # As in production: each task carries an ID token for this service account, which the
            # emulator signs and the execute view verifies (requests without one get 401).
            "OIDC_SERVICE_ACCOUNT_EMAIL": "tasks-invoker@demo-project.iam.gserviceaccount.com",
            "STORE_RESULTS": True,
            # Queues and periodic tasks as code: `manage.py cloudtasks_sync --apply` creates them
            # in Google Cloud, and the emulator creates them when it starts.
            "CLOUD_TASKS_QUEUES": {
                "default": {"max_attempts": 20},
                "high-priority": {"max_dispatches_per_second": 50},
            },
            "SCHEDULES": {
                "heartbeat": {
                    "task": "demo.tasks.heartbeat",
                    "cron": "* * * * *",
                    "description": "A periodic task to watch: it runs at the start of each minute",
                },
            },
        },
    }
}


_EXECUTE_PATH = "/cloudtasks/execute/"


def _not_polling(record: logging.LogRecord) -> bool:
    # Neither the page's polling of the task list every second nor the deliveries of tasks, which
    # the emulator logs itself (one line per attempt, with the retry count) and demo/outcomes.py
    # sums up.
    message = record.getMessage()
    return "GET /tasks/ " not in message and f"POST {_EXECUTE_PATH} " not in message


def _not_a_delivery(record: logging.LogRecord) -> bool:
    # A task that raised is answered with a 500 so that Cloud Tasks retries it: that is not a
    # server error worth a traceback per attempt.
    request = getattr(record, "request", None)
    return getattr(request, "path", None) != _EXECUTE_PATH


# One line per task attempt (demo/outcomes.py) and the tasks' own log lines, next to the server's
# request log without what would bury them.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "not_polling": {"()": "django.utils.log.CallbackFilter", "callback": _not_polling},
        "not_a_delivery": {"()": "django.utils.log.CallbackFilter", "callback": _not_a_delivery},
    },
    "formatters": {
        "django.server": {
            "()": "django.utils.log.ServerFormatter",
            "format": "[{server_time}] {message}",
            "style": "{",
        },
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler"},
        "null": {"class": "logging.NullHandler"},
        "requests": {"class": "logging.StreamHandler", "filters": ["not_a_delivery"]},
        "django.server": {
            "class": "logging.StreamHandler",
            "formatter": "django.server",
            "filters": ["not_polling"],
        },
    },
    "loggers": {
        "demo": {"handlers": ["console"], "level": "INFO"},
        # Each attempt's outcome is logged by demo/outcomes.py, without the traceback.
        "django.tasks": {"handlers": ["null"], "propagate": False},
        "django_tasks_cloud_tasks.execution": {"handlers": ["null"], "propagate": False},
        "django.request": {"handlers": ["requests"], "level": "ERROR", "propagate": False},
        "django.server": {"handlers": ["django.server"], "level": "INFO", "propagate": False},
    },
}
