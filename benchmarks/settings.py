"""Settings of the benchmark's Django project (environment variables fill in the per-run parts)."""

import os
import tempfile
from pathlib import Path

SECRET_KEY = "benchmark-only-not-secret"
DEBUG = False
USE_TZ = True
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "benchmarks.urls"
INSTALLED_APPS = ["django_tasks_cloud_tasks", "benchmarks"]
# A typical project's stack (no database needed); both the bare view and the execute view pass it.
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get(
            "BENCHMARK_DATABASE", str(Path(tempfile.gettempdir()) / "dtct-benchmark.sqlite3")
        ),
        # SQLite as a served project would run it: persistent connections, the write-ahead log
        # and no fsync per commit (by default each request would open the database, and each
        # write would cost milliseconds and lock out readers).
        "CONN_MAX_AGE": 600,
        "OPTIONS": {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
        },
    }
}
_OPTIONS = {
    "CLOUD_TASKS_PROJECT": "bench-project",
    "CLOUD_TASKS_LOCATION": "us-central1",
    "TASK_HANDLER_HOST": os.environ.get("BENCHMARK_HANDLER_HOST", "http://127.0.0.1:9"),
    "ALLOW_UNAUTHENTICATED": True,
}
if os.environ.get("BENCHMARK_OIDC_EMAIL"):
    _OPTIONS.update(
        OIDC_SERVICE_ACCOUNT_EMAIL=os.environ["BENCHMARK_OIDC_EMAIL"], ALLOW_UNAUTHENTICATED=False
    )
if os.environ.get("BENCHMARK_STORE_RESULTS"):
    _OPTIONS["STORE_RESULTS"] = True
if os.environ.get("BENCHMARK_LEASE_RENEWAL_INTERVAL"):
    _OPTIONS.update(
        LEASE=1, LEASE_RENEWAL_INTERVAL=float(os.environ["BENCHMARK_LEASE_RENEWAL_INTERVAL"])
    )
TASKS = {
    "default": {
        "BACKEND": "django_tasks_cloud_tasks.CloudTasksBackend",
        "QUEUES": [],
        "OPTIONS": _OPTIONS,
    }
}
