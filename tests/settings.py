"""Settings for the test suite; each test configures TASKS for the emulator it runs against."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

SECRET_KEY = "tests-only-not-secret"
DEBUG = False
USE_TZ = True
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "tests.urls"
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.messages",
    "django.contrib.sessions",
    "django_tasks_cloud_tasks",
    "tests",
]
MIDDLEWARE = [
    # What a server instrumentation does (tests/server_spans.py), when a test turns it on.
    "tests.server_spans.ServerSpanMiddleware",
    # Tasks enqueued while a request runs carry its trace context.
    "django_tasks_cloud_tasks.tracing.TraceContextMiddleware",
    "django.middleware.common.CommonMiddleware",
    # For the admin of the result store.
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
_DATABASE_DIR = Path(tempfile.mkdtemp(prefix="django-tasks-cloud-tasks-tests-"))
atexit.register(shutil.rmtree, _DATABASE_DIR, ignore_errors=True)
# A file, not ":memory:": live servers answer from their own threads, each with a connection.
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(_DATABASE_DIR / "db.sqlite3"),
        "TEST": {"NAME": str(_DATABASE_DIR / "test.sqlite3")},
    }
}
# Cloud SQL offers PostgreSQL: with TEST_POSTGRES_HOST set, the suite runs against that server.
if os.environ.get("TEST_POSTGRES_HOST"):
    DATABASES["default"] = {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ["TEST_POSTGRES_HOST"],
        "PORT": os.environ.get("TEST_POSTGRES_PORT", "5432"),
        "USER": os.environ.get("TEST_POSTGRES_USER", "postgres"),
        "PASSWORD": os.environ.get("TEST_POSTGRES_PASSWORD", ""),
        "NAME": "django_tasks_cloud_tasks",
    }
# And MySQL: with TEST_MYSQL_HOST set (scripts/with-mariadb), the suite runs against that server.
elif os.environ.get("TEST_MYSQL_HOST"):
    DATABASES["default"] = {
        "ENGINE": "django.db.backends.mysql",
        "HOST": os.environ["TEST_MYSQL_HOST"],
        "PORT": os.environ.get("TEST_MYSQL_PORT", "3306"),
        "USER": os.environ.get("TEST_MYSQL_USER", "root"),
        "PASSWORD": os.environ.get("TEST_MYSQL_PASSWORD", ""),
        "NAME": "django_tasks_cloud_tasks",
        "OPTIONS": {"charset": "utf8mb4"},
    }
TASKS = {
    "default": {
        "BACKEND": "django_tasks_cloud_tasks.CloudTasksBackend",
        "QUEUES": [],
        "OPTIONS": {
            "CLOUD_TASKS_PROJECT": "test-project",
            "CLOUD_TASKS_LOCATION": "us-central1",
            "TASK_HANDLER_HOST": "http://127.0.0.1:1",
        },
    }
}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"null": {"class": "logging.NullHandler"}},
    "root": {"handlers": ["null"]},
}
STATIC_URL = "static/"
# The admin tests log users in; the default hasher is slow on purpose.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
