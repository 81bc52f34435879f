"""The worker/beat deployable: the Celery app, the task decorator, the retrain steps and their tasks."""
