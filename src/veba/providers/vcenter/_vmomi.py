"""pyVmomi, typed loosely: its types are generated at run time, so mypy sees little."""

from __future__ import annotations

from typing import Any

import pyVim.connect as _connect
import pyVmomi as _pyvmomi

__all__ = ["Disconnect", "SmartConnect", "VmomiSupport", "vim", "vmodl"]

vim: Any = _pyvmomi.vim
vmodl: Any = _pyvmomi.vmodl
VmomiSupport: Any = _pyvmomi.VmomiSupport
SmartConnect: Any = _connect.SmartConnect
Disconnect: Any = _connect.Disconnect
