"""Multi-objective NAS trial: a two-hidden-layer MLP classifier, accuracy against size.

The data is generated here from a fixed seed (nothing is downloaded): 16-D Gaussian inputs
labelled into 4 classes by a random "teacher" network, with 8% of the labels flipped, 3,000
training and 1,000 validation rows. A wider network fits the teacher better, up to the label
noise, and costs parameters; that is the trade-off ``examples/nas.yaml`` maps out.

Parameters (``PREFECT_HPO_PARAMS``, see ``prefect_hpo.trial``): ``width1``, ``width2`` (hidden
units), ``lr`` (Adam), ``dropout``, ``batch_size``, ``epochs``. It reports ``val_accuracy`` and
``val_loss`` after every epoch and, once, ``n_params`` (the trainable parameters: the size
objective). A trial takes a few seconds on one CPU core.

    python examples/nas/train.py
    PREFECT_HPO_PARAMS='{"width1": 64, "width2": 32, "lr": 0.003, "dropout": 0.1, "batch_size": 64, "epochs": 10}' python examples/nas/train.py
"""

from __future__ import annotations

import os

# one thread per trial, trials run side by side; set before torch is imported
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from prefect_hpo.trial import PARAMS_ENV, get_params, report  # noqa: E402

DEFAULTS = {"width1": 64, "width2": 32, "lr": 0.003, "dropout": 0.1, "batch_size": 64, "epochs": 10}
DATA_SEED, INIT_SEED = 7, 0
N_TRAIN, N_VAL, DIM, CLASSES, LABEL_NOISE = 3000, 1000, 8, 4, 0.05


def make_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(DATA_SEED)
    x = torch.randn(N_TRAIN + N_VAL, DIM, generator=gen)
    w1, w2 = torch.randn(DIM, 12, generator=gen), torch.randn(12, CLASSES, generator=gen)
    y = (torch.tanh(x @ w1) @ w2).argmax(dim=1)
    flip = torch.rand(len(y), generator=gen) < LABEL_NOISE
    y[flip] = torch.randint(0, CLASSES, (int(flip.sum()),), generator=gen)
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


def build(width1: int, width2: int, dropout: float) -> nn.Module:
    return nn.Sequential(
        nn.Linear(DIM, width1), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(width1, width2), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(width2, CLASSES),
    )


def main() -> None:
    torch.set_num_threads(1)
    params = {**DEFAULTS, **(get_params() if os.environ.get(PARAMS_ENV) else {})}
    x_train, y_train, x_val, y_val = make_data()
    torch.manual_seed(INIT_SEED)
    model = build(int(params["width1"]), int(params["width2"]), float(params["dropout"]))
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = torch.optim.Adam(model.parameters(), lr=float(params["lr"]))
    loss_fn = nn.CrossEntropyLoss()
    batch = int(params["batch_size"])
    shuffle = torch.Generator().manual_seed(INIT_SEED)
    for epoch in range(1, int(params["epochs"]) + 1):
        model.train()
        for idx in torch.randperm(N_TRAIN, generator=shuffle).split(batch):
            optimizer.zero_grad()
            loss_fn(model(x_train[idx]), y_train[idx]).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            logits = model(x_val)
            val_loss = loss_fn(logits, y_val).item()
            val_accuracy = (logits.argmax(dim=1) == y_val).float().mean().item()
        report(step=epoch, val_accuracy=val_accuracy, val_loss=val_loss)
    report(n_params=float(n_params))


if __name__ == "__main__":
    main()
