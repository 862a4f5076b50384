from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("django_tasks_cloud_tasks", "0002_taskrecord_run_after")]

    operations = [
        migrations.AddField(
            model_name="taskrecord",
            name="lease_expires_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
