"""What every route reads from the app: the appliance it serves."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import Request

if TYPE_CHECKING:
    from veba.appliance import Appliance

__all__ = ["appliance_of"]


def appliance_of(request: Request) -> Appliance:
    appliance: Appliance = request.app.state.appliance
    return appliance
