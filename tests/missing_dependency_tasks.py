"""A task module that imports a package that is not installed.

Only the failure tests import it, through the execute view; nothing else may.
"""

import a_dependency_that_is_not_installed  # noqa: F401
from django.tasks import task

from tests.tasks import Call, recorder


@task
def needs_the_dependency() -> None:
    recorder.record(Call("needs_the_dependency"))
