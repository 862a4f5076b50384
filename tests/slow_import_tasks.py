"""A task module that takes a while to import, as one with heavy imports does.

Only ``test_first_deliveries_racing_the_import_of_a_task_module_all_run`` imports it, through the
execute view, from several threads at once.
"""

import time

from django.tasks import task

from tests.tasks import Call, recorder

time.sleep(0.5)


@task
def imported_slowly(n: int) -> int:
    recorder.record(Call("imported_slowly", (n,)))
    return n
