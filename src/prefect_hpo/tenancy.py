"""Tenants: teams sharing one prefect-hpo installation without seeing or driving each other's work.

A tenant is a name (a DNS label, so it can also be a Kubernetes namespace, a work queue and part
of a concurrency-limit name). An experiment belongs to at most one tenant, written in its spec
(``tenant: team-a``) and so in its checkpoint. What belongs to tenant ``t``:

* checkpoints, leases and trial folders under ``<storage>/tenants/t/`` (the storage URI the spec
  gives is the installation's root);
* the MLflow experiment ``t/<name>``;
* on a work pool, the work queue ``t`` (or ``t-<something>``); on a work pool or Dask,
  concurrency limits named ``...-t`` (default ``gpu-t``), so one tenant's trials never take
  another's GPUs or queue.

Who is calling is ``PREFECT_HPO_TENANT`` (or ``--tenant``), set by the platform for each team's
deployments, workers and shells; nothing else. A spec's ``tenant`` says whose experiment it is,
so only that tenant may run it (a caller with no tenant cannot take one on by writing it into a
spec). Every path (run, resume, status, best) makes the same check: a caller only finds
experiments under its own prefix, an experiment whose recorded tenant is not the caller's is
refused with :class:`TenantError`, and a storage URI that points into a tenant's part of a store
(``.../tenants/t``) is refused: the URI names the installation's root. This is namespacing with guard rails, not security on its
own: hard isolation comes from giving each tenant credentials that only reach its own prefix
(an S3 bucket policy on ``tenants/t/*``), its MLflow experiments and its namespace.
"""

from __future__ import annotations

import os
import re

from prefect_hpo.errors import SpecError, TenantError

__all__ = [
    "TENANT_ENV",
    "TenantError",
    "caller_tenant",
    "check_owner",
    "check_tenant_name",
    "mlflow_experiment_name",
    "resolve_tenant",
    "scoped_storage",
    "tenant_limit",
]

TENANT_ENV = "PREFECT_HPO_TENANT"
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")  # \Z: "$" would let "a\n" through


def check_tenant_name(value: str, field: str = "tenant") -> str:
    if not isinstance(value, str) or not _LABEL.match(value):
        raise SpecError(
            f"{field}: {value!r} is not a valid tenant: use 1-63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit (it also names a namespace, a work queue and limits)"
        )
    return value


def caller_tenant(explicit: str | None = None) -> str | None:
    """The calling tenant: ``explicit`` (a ``--tenant`` flag), else ``$PREFECT_HPO_TENANT``, else none."""
    value = explicit if explicit is not None else os.environ.get(TENANT_ENV) or None
    return None if value is None else check_tenant_name(value, "--tenant" if explicit is not None else TENANT_ENV)


def resolve_tenant(spec_tenant: str | None, caller: str | None) -> str | None:
    """The tenant an experiment run by ``caller`` from a spec naming ``spec_tenant`` belongs to:
    the caller's. A spec that names a tenant is only run by that tenant, so the owner check of a
    run is the one ``status`` and ``resume`` make (:func:`check_owner`)."""
    if spec_tenant is not None and spec_tenant != caller:
        if caller is None:
            raise TenantError(
                f"the spec belongs to tenant {spec_tenant!r} and this caller has no tenant (${TENANT_ENV} unset); "
                f"run it as that tenant (--tenant {spec_tenant} or {TENANT_ENV}={spec_tenant})"
            )
        raise TenantError(
            f"the spec belongs to tenant {spec_tenant!r} and this caller is tenant {caller!r} "
            f"(${TENANT_ENV}); one tenant cannot run another's experiments"
        )
    return caller


def check_owner(name: str, owner: str | None, caller: str | None) -> None:
    """Refuse a caller that is not the experiment's tenant (reading, resuming or driving it)."""
    if owner == caller:
        return
    if owner is None:
        raise TenantError(f"experiment {name!r} belongs to no tenant; unset ${TENANT_ENV} (now {caller!r}) to use it")
    who = f"tenant {caller!r}" if caller is not None else f"a caller with no tenant (${TENANT_ENV} unset)"
    raise TenantError(f"experiment {name!r} belongs to tenant {owner!r}; {who} cannot read, resume or drive it")


def scoped_storage(storage: str, tenant: str | None) -> str:
    """The tenant's own part of a checkpoint store: ``<storage>/tenants/<tenant>``.

    ``storage`` is the installation's root: one that already points into a tenant's part
    (``<root>/tenants/a``) is refused, or ``--tenant b`` would put b's experiments inside a's
    folder and a caller with no tenant would read a's part as its own."""
    parts = storage.rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == "tenants" and _LABEL.match(parts[-1]):
        root = "/".join(parts[:-2]) or "/"
        raise TenantError(
            f"storage {storage!r} belongs to tenant {parts[-1]!r} (it is that tenant's part of {root!r}); "
            f"give the store's root, {root!r}, and run as the tenant (--tenant or ${TENANT_ENV})"
        )
    if tenant is None:
        return storage
    return f"{storage.rstrip('/')}/tenants/{tenant}"


def mlflow_experiment_name(name: str, tenant: str | None) -> str:
    return name if tenant is None else f"{tenant}/{name}"


def check_work_pool_names(tenant: str, work_queue: str | None, concurrency_limit: str | None) -> tuple[str, str]:
    """The tenant's work queue and concurrency limit for a work-pool experiment; names that
    belong to someone else are refused. Returns ``(work_queue, concurrency_limit)``."""
    queue = work_queue or tenant
    if queue != tenant and not queue.startswith(f"{tenant}-"):
        raise SpecError(f"trial.work_pool.work_queue: {queue!r} is not tenant {tenant!r}'s; use {tenant!r} or '{tenant}-...'")
    return queue, tenant_limit(tenant, concurrency_limit, "trial.work_pool.concurrency_limit")


def tenant_limit(tenant: str, concurrency_limit: str | None, field: str) -> str:
    """The concurrency limit a tenant's trials hold: the one named if it is the tenant's
    (``...-<tenant>``), else refused; ``gpu-<tenant>`` when none is named."""
    if concurrency_limit is None:
        return f"gpu-{tenant}"
    if not concurrency_limit.endswith(f"-{tenant}"):
        raise SpecError(
            f"{field}: {concurrency_limit!r} is not tenant {tenant!r}'s; "
            f"a tenant's limits end in '-{tenant}' (e.g. 'gpu-{tenant}')"
        )
    return concurrency_limit
