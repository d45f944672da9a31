"""How much a busy neighbour (a running trial) slows GP suggestions, per thread setting.

Each configuration runs in a fresh subprocess (``OMP_WAIT_POLICY`` only takes effect before torch
is imported): it builds a Hartmann6 experiment with 59 observations and times ``ask()`` several
times, optionally while another process keeps both cores busy with a torch matmul loop (the
"trial"). Results are printed, never asserted.

    .venv/bin/python benchmarks/bench_threads.py
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

WORKER = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2])
import numpy as np
from problems import get_problem
from prefect_hpo import Experiment
problem = get_problem("hartmann6")
exp = Experiment("threads", problem.parameters, {"y": "minimize"}, algorithm="sobol", seed=0)
for _ in range(int(sys.argv[4])):
    t = exp.ask(); exp.tell(t.index, {"y": problem.evaluate(t.params)})
times = []
for rep in range(int(sys.argv[3])):
    gp = Experiment.from_dict(exp.to_dict() | {"algorithm": "gp", "suggester_state": {}})
    t0 = time.perf_counter(); gp.ask(); times.append(time.perf_counter() - t0)
print(json.dumps(times))
"""

BURNER = r"""
import torch, time
torch.set_num_threads(2)
a = torch.randn(400, 400)
end = time.time() + 600
while time.time() < end:
    a = torch.tanh(a @ a)
"""


def run(threads: int, wait_policy: str, busy: bool, reps: int, observations: int) -> list[float]:
    env = dict(os.environ, PREFECT_HPO_TORCH_THREADS=str(threads))
    # prefect_hpo sets PASSIVE only when the variable is unset, so the spinning policy is
    # reproduced by asking for it explicitly.
    env["OMP_WAIT_POLICY"] = wait_policy
    burner = subprocess.Popen([sys.executable, "-c", BURNER]) if busy else None
    try:
        time.sleep(1.0 if busy else 0.0)
        out = subprocess.run(
            [sys.executable, "-c", WORKER, str(REPO / "src"), str(REPO / "benchmarks"), str(reps), str(observations)],
            env=env, capture_output=True, text=True, check=True,
        )
    finally:
        if burner:
            burner.kill()
            burner.wait()
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5, help="GP asks timed per configuration (default 5)")
    ap.add_argument("--observations", type=int, default=59, help="Sobol observations before the GP ask (default 59)")
    ap.add_argument("--idle-only", action="store_true", help="skip the runs beside a busy neighbour")
    args = ap.parse_args()
    print("command:", " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]))
    print(f"cpus: {os.cpu_count()}; GP ask on Hartmann6 with {args.observations} observations (cold fit), "
          f"median of {args.reps}")
    print("| torch threads | OMP_WAIT_POLICY | neighbour | median ask ms | max ask ms |")
    print("|---|---|---|---|---|")
    for busy in (False,) if args.idle_only else (False, True):
        for threads, policy in ((1, "PASSIVE"), (2, "PASSIVE"), (2, "ACTIVE")):
            times = sorted(run(threads, policy, busy, reps=args.reps, observations=args.observations))
            print(f"| {threads} | {policy} | {'busy (2-thread matmul)' if busy else 'idle'} | "
                  f"{1000 * times[len(times) // 2]:.0f} | {1000 * times[-1]:.0f} |", flush=True)


if __name__ == "__main__":
    main()
