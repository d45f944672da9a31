"""The quickstart trial: a tiny PyTorch MLP regression, tuned by ``examples/quickstart.yaml``.

It fits a small two-layer MLP to a smooth nonlinear function of two inputs plus noise (1,024
training and 256 validation samples, generated here with a fixed seed: nothing is downloaded)
and reports the validation mean squared error after every epoch::

    PREFECT_HPO_REPORT {"step": 1, "metrics": {"val_loss": 0.31, "train_loss": 0.35}}

Parameters (from ``PREFECT_HPO_PARAMS``, see ``prefect_hpo.trial``):

* ``lr``        learning rate (float, tuned on a log scale)
* ``hidden``    width of the two hidden layers (int)
* ``optimizer`` ``"adam"`` or ``"sgd"`` (SGD with momentum 0.9)
* ``epochs``    optional, default 8

The noise floor of ``val_loss`` is 0.01. In 8 epochs a good configuration (Adam, lr 0.01-0.03,
32 or more hidden units) reaches about 0.03, while a bad one (SGD with lr 1e-4) stays above 0.2:
there is something for the optimizer to find. Training is deterministic (fixed data and
initialization seeds). A whole trial takes about 1.5 s on one CPU core, most of it
``import torch``.

Run it standalone from the repository root, with defaults or with chosen parameters::

    python examples/quickstart/train.py
    PREFECT_HPO_PARAMS='{"lr": 0.01, "hidden": 64, "optimizer": "adam"}' python examples/quickstart/train.py

A diverging run (e.g. SGD with lr 0.1 on some widths) reports a NaN/inf ``val_loss`` and stops;
prefect-hpo marks such a trial failed.
"""

from __future__ import annotations

import math
import os
import sys

# Trials run beside each other (and beside the optimizer): one thread each, and no spinning
# OpenMP threads. Both must be set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from prefect_hpo.trial import PARAMS_ENV, get_params, report  # noqa: E402

DEFAULTS = {"lr": 0.01, "hidden": 64, "optimizer": "adam", "epochs": 8}
DATA_SEED = 1234
# Initialization and shuffling seed: fixed, so a configuration always gives the same result,
# unless TRAIN_INIT_SEED says otherwise (examples/bandit.yaml varies it per trial to show noise).
INIT_SEED = int(os.environ.get("TRAIN_INIT_SEED", "0"))
N_TRAIN, N_VAL, BATCH = 1024, 256, 64


def make_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs uniform on [-2, 2]^2; target a smooth nonlinear function plus N(0, 0.1^2) noise."""
    gen = torch.Generator().manual_seed(DATA_SEED)
    x = torch.rand(N_TRAIN + N_VAL, 2, generator=gen) * 4 - 2
    y = torch.sin(2 * x[:, :1]) * torch.cos(1.5 * x[:, 1:]) + 0.3 * x[:, 1:] + 0.1 * torch.randn(N_TRAIN + N_VAL, 1, generator=gen)
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


class Optimizer:
    """Adam, or SGD with momentum 0.9, as in ``torch.optim`` (default hyperparameters).

    Written out because the first use of ``torch.optim`` imports ``torch._dynamo``, which costs
    about 1 s here: as much as the whole training. A real training script just uses
    ``torch.optim.Adam`` / ``torch.optim.SGD``.
    """

    def __init__(self, params: list[torch.Tensor], kind: str, lr: float) -> None:
        self.params, self.kind, self.lr, self.t = params, kind, lr, 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        for p, m, v in zip(self.params, self.m, self.v):
            if self.kind == "sgd":  # torch.optim.SGD(momentum=0.9)
                if self.t == 1:
                    m.copy_(p.grad)
                else:
                    m.mul_(0.9).add_(p.grad)
                p.sub_(self.lr * m)
            else:  # torch.optim.Adam(betas=(0.9, 0.999), eps=1e-8)
                m.mul_(0.9).add_(p.grad, alpha=0.1)
                v.mul_(0.999).addcmul_(p.grad, p.grad, value=0.001)
                m_hat = m / (1 - 0.9**self.t)
                v_hat = v / (1 - 0.999**self.t)
                p.sub_(self.lr * m_hat / (v_hat.sqrt() + 1e-8))


def read_params() -> dict:
    if PARAMS_ENV not in os.environ:
        print(f"note: {PARAMS_ENV} is not set; running standalone with defaults {DEFAULTS}", file=sys.stderr)
        return dict(DEFAULTS)
    return {**DEFAULTS, **get_params()}


def main() -> int:
    torch.set_num_threads(1)
    params = read_params()
    lr, hidden, opt_name, epochs = float(params["lr"]), int(params["hidden"]), str(params["optimizer"]), int(params["epochs"])
    print(f"training: lr={lr:.3g} hidden={hidden} optimizer={opt_name} epochs={epochs}")

    x_train, y_train, x_val, y_val = make_data()
    torch.manual_seed(INIT_SEED)
    model = torch.nn.Sequential(
        torch.nn.Linear(2, hidden), torch.nn.Tanh(),
        torch.nn.Linear(hidden, hidden), torch.nn.Tanh(),
        torch.nn.Linear(hidden, 1),
    )
    if opt_name not in ("adam", "sgd"):
        print(f"error: optimizer must be 'adam' or 'sgd', got {opt_name!r}", file=sys.stderr)
        return 2
    opt = Optimizer(list(model.parameters()), opt_name, lr)
    loss_fn = torch.nn.MSELoss()
    shuffle = torch.Generator().manual_seed(INIT_SEED)

    for epoch in range(1, epochs + 1):
        model.train()
        total = 0.0
        for idx in torch.randperm(N_TRAIN, generator=shuffle).split(BATCH):
            opt.zero_grad()
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        model.eval()
        with torch.no_grad():
            val_loss = loss_fn(model(x_val), y_val).item()
        report(step=epoch, val_loss=val_loss, train_loss=total / N_TRAIN)
        if not math.isfinite(val_loss):
            print(f"diverged at epoch {epoch} (val_loss={val_loss}); stopping", file=sys.stderr)
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
