"""Benchmarks of veba against Dramatiq and Celery: ``python -m bench``."""
