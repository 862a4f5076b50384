"""``python -m django_tasks_cloud_tasks.emulator``: the same as ``cloud-tasks-emulator``."""

import sys

from .cli import main

sys.exit(main())
