"""REST API, OpenFaaS-style routes and the CloudEvents webhook."""

from veba.api.app import create_app

__all__ = ["create_app"]
