"""What `veba serve` checks before it writes anything into its data directory.

Each check returns (or raises with) one line saying what is wrong and what to
do; `veba serve` prints it and exits non-zero. Sockets are bound by
`veba.listeners` and the data directory locked by `OwnerLock`; what is left
here is what a provider would otherwise find only by retrying forever: a
vCenter password that cannot be read, a root CA file that is not there.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from pathlib import Path

from veba.config import VCenterConfig

__all__ = ["vcenter_problems"]


def vcenter_problems(
    vcenters: Iterable[VCenterConfig], data_dir: Path, *, shared_secrets: bool = False
) -> list[str]:
    """Why some vCenter could not log in as configured (empty: all can try).
    With `shared_secrets` (in NATS, not reachable yet) a password secret is
    read only at login, and the provider's status says what went wrong."""
    problems: list[str] = []
    for vc in vcenters:
        where = f"vCenter {vc.address}"
        problem = _password_problem(vc, data_dir, shared_secrets)
        if problem:
            problems.append(f"{where}: {problem}")
        for ca in vc.root_cas:
            if not Path(ca).is_file():
                problems.append(f"{where}: root CA {ca}: no such file (--vcenter-ca / rootCAs)")
    return problems


def _password_problem(vc: VCenterConfig, data_dir: Path, shared_secrets: bool) -> str | None:
    if vc.password is not None:
        return None  # inline in a RouterConfig, its ${VAR}s already substituted
    if vc.password_env:
        value = os.environ.get(vc.password_env)
        if value is None:
            return (
                f"${vc.password_env} is not set (--vcenter-password-env): export it in the"
                " environment of `veba serve`"
            )
        if not value:
            return f"${vc.password_env} is empty (--vcenter-password-env)"
        return None
    if vc.password_secret:
        return None if shared_secrets else _secret_problem(vc.password_secret, data_dir)
    return "no password: give --vcenter-password-env VAR or --vcenter-password-secret NAME"


def _secret_problem(name: str, data_dir: Path) -> str | None:
    from veba.secrets import SecretError, SecretStore

    create = (
        f"create it first (`veba serve` without --vcenter, then `veba secret create {name}"
        " --from-file FILE`), or use --vcenter-password-env"
    )
    if not (data_dir / "secret.key").is_file():  # no secret was ever made here
        return f"--vcenter-password-secret {name}: no such secret in {data_dir}; {create}"
    try:
        value = asyncio.run(SecretStore(data_dir).get(name))  # before the loop starts
    except SecretError as exc:
        hint = f"; {create}" if "does not exist" in str(exc) else ""
        return f"--vcenter-password-secret {name}: {exc}{hint}"
    if not value.strip():
        return f"--vcenter-password-secret {name}: the secret is empty"
    return None
