"""A task module that fails while it is imported, as one reading a setting missing during a deploy.

Only the failure tests import it, through the execute view; nothing else may.
"""

import os

from django.tasks import task

from tests.tasks import Call, recorder

API_KEY = os.environ["DJANGO_TASKS_CLOUD_TASKS_TESTS_UNSET_VARIABLE"]


@task
def needs_the_api_key() -> None:
    recorder.record(Call("needs_the_api_key"))
