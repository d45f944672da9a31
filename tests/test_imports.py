"""Every module of prefect_hpo imports on its own, first, in an interpreter that has none of them.

A module that only works when another of the package was imported before it (a circular import:
``storage.local_store`` used to fail unless ``storage.checkpoint`` came first) breaks whoever
imports it directly: a trial program, a plugin, a test. Importing each module in its own fresh
interpreter would cost ~70 x 3-5 s here (torch, Prefect, MLflow load every time), so a helper
interpreter loads the third-party libraries once, checks that no prefect_hpo module is loaded
yet, and forks one child per module: each child starts with the libraries loaded but the package
untouched, which is what an import-order bug needs to show (measured: ~13 s instead of ~4 min).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

_INVENTORY = textwrap.dedent(
    """
    # Which modules the package has, and which outside modules importing all of them loads (in
    # load order): the checker preloads exactly those, so each child pays for nothing but prefect_hpo.
    import importlib, json, os, pkgutil, sys
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import prefect_hpo
    names = [m.name for m in pkgutil.walk_packages(prefect_hpo.__path__, "prefect_hpo.", onerror=lambda _: None)]
    modules = ["prefect_hpo", *sorted(n for n in names if not n.endswith(".__main__"))]
    for name in modules:
        try:
            importlib.import_module(name)
        except BaseException:
            pass  # the checker reports it
    outside = [m for m in sys.modules if m != "prefect_hpo" and not m.startswith("prefect_hpo.") and m != "__main__"]
    print(json.dumps({"modules": modules, "libraries": outside}))
    """
)

_FORK_SERVER = textwrap.dedent(
    """
    import importlib, json, os, signal, sys, traceback
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as prefect_hpo does before torch
    given = json.loads(sys.stdin.read())  # on stdin: the list of libraries outgrew one argv string (128 KiB)
    modules, preload = given["modules"], given["libraries"]
    for lib in preload:
        try:
            importlib.import_module(lib)
        except BaseException:
            pass  # an alias or lazily registered name; the child imports what it needs
    early = sorted(m for m in sys.modules if m == "prefect_hpo" or m.startswith("prefect_hpo."))
    if early:
        sys.exit("the preloaded libraries imported prefect_hpo modules: " + ", ".join(early))
    for name in modules:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: a package-free interpreter state, import one module, report
            os.close(read_fd)
            signal.alarm(120)  # a hung import (lock held across the fork) fails instead of hanging
            try:
                importlib.import_module(name)
                message = ""
            except BaseException:
                message = traceback.format_exc() or "failed"
            os.write(write_fd, message.encode("utf-8", "replace"))
            os._exit(0)
        os.close(write_fd)
        chunks = []
        while chunk := os.read(read_fd, 65536):
            chunks.append(chunk)
        os.close(read_fd)
        _, status = os.waitpid(pid, 0)
        error = b"".join(chunks).decode("utf-8", "replace")
        if not error and status != 0:
            error = f"the importing process ended with wait status {status}"
        print(json.dumps({"module": name, "error": error}), flush=True)
    """
)


def test_every_module_imports_on_its_own() -> None:
    inventory = subprocess.run([sys.executable, "-c", _INVENTORY], capture_output=True, text=True, timeout=600)
    assert inventory.returncode == 0, f"listing the package's modules failed:\n{inventory.stderr[-4000:]}"
    found = json.loads(inventory.stdout.splitlines()[-1])
    modules, preload = found["modules"], found["libraries"]
    assert "prefect_hpo.storage.local_store" in modules and len(modules) > 40  # the walk found the package
    proc = subprocess.run(
        [sys.executable, "-c", _FORK_SERVER], input=json.dumps({"modules": modules, "libraries": preload}),
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"the import checker failed:\n{proc.stderr[-4000:]}"
    results = {r["module"]: r["error"] for r in map(json.loads, proc.stdout.splitlines())}
    assert set(results) == set(modules), f"modules not checked: {sorted(set(modules) - set(results))}"
    failed = {name: error for name, error in results.items() if error}
    report = "\n\n".join(f"{name}:\n{error.strip().splitlines()[-1]}" for name, error in sorted(failed.items()))
    assert not failed, f"{len(failed)} module(s) fail when imported first:\n{report}"


@pytest.mark.parametrize("module", ["prefect_hpo.storage.local_store", "prefect_hpo.storage.s3_store"])
def test_store_modules_import_first_in_a_fresh_interpreter(module: str) -> None:
    """The two modules of the reported bug, in a truly fresh interpreter (no fork, no preload)."""
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
