"""The peers veba is measured against: Dramatiq and Celery, both on Redis."""
