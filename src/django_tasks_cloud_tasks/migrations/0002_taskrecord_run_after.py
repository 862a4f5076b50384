from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("django_tasks_cloud_tasks", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="taskrecord",
            name="run_after",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
