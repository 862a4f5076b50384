"""Settings of the soak test's server and enqueuers (benchmarks/soak.py): the benchmark's project,
with the result store on PostgreSQL (SOAK_POSTGRES_HOST/PORT) or SQLite (BENCHMARK_DATABASE)."""

import os

from benchmarks.settings import *  # noqa: F403
from benchmarks.settings import DATABASES, TASKS

if os.environ.get("SOAK_POSTGRES_HOST"):
    DATABASES["default"] = {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ["SOAK_POSTGRES_HOST"],
        "PORT": os.environ["SOAK_POSTGRES_PORT"],
        "NAME": "postgres",
        "USER": os.environ.get("SOAK_POSTGRES_USER", "postgres"),
        "PASSWORD": os.environ.get("SOAK_POSTGRES_PASSWORD", ""),
        # Connections survive requests, and one broken by a database restart is replaced.
        "CONN_MAX_AGE": 60,
        "CONN_HEALTH_CHECKS": True,
    }
else:
    DATABASES["default"]["OPTIONS"]["timeout"] = 30

TASKS["default"]["OPTIONS"]["STORE_RESULTS"] = True
if os.environ.get("SOAK_LEASE"):
    TASKS["default"]["OPTIONS"]["LEASE"] = float(os.environ["SOAK_LEASE"])
