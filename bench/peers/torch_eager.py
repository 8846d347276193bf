"""PyTorch eager on the cnnfast benchmark (see peer_common.py for what is measured).

Measured with: torch 2.13.0 (CPU wheel from download.pytorch.org/whl/cpu or PyPI), numpy 2.4.6,
Python 3.11 (bench/run_peers.sh installs torch==2.13.0 into its own venv).

    THREADS=2 LIMIT=60000 python torch_eager.py
    MEMORY=channels_last python torch_eager.py     # the model and the batches in NHWC memory

The model is nn.Sequential with PyTorch's default initialisation; each step is zero_grad,
forward, cross-entropy, backward and Adam's step. Warm-up: three steps on a copy of the model,
not timed (compile_s), so the timed epoch starts from the same initial weights.
"""

import copy
import os

import torch
from peer_common import INFER_BATCH, LR, SETTINGS, Timer, batches, epoch_order, mnist, report
from torch import nn

MEMORY = os.environ.get("MEMORY", "contiguous")  # or channels_last
FORMAT = torch.channels_last if MEMORY == "channels_last" else torch.contiguous_format


def build():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(1600, 10),
    ).to(memory_format=FORMAT)


def train_step(model, optimizer, x, y):
    optimizer.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return loss


def main():
    torch.set_num_threads(SETTINGS["threads"])
    x_train, y_train, x_test, y_test = (torch.from_numpy(a) for a in mnist("NCHW"))
    x_train, x_test = x_train.contiguous(memory_format=FORMAT), x_test.contiguous(memory_format=FORMAT)
    model = build()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)

    with Timer() as warm:
        scratch = copy.deepcopy(model)
        scratch_optimizer = torch.optim.Adam(scratch.parameters(), lr=LR)
        for _ in range(3):
            train_step(scratch, scratch_optimizer, x_train[: SETTINGS["bs"]], y_train[: SETTINGS["bs"]])
        with torch.no_grad():
            scratch.eval()(x_test[:INFER_BATCH])

    for epoch in range(1, SETTINGS["epochs"] + 1):
        model.train()
        order = torch.from_numpy(epoch_order(epoch, len(x_train)))
        with Timer() as training:
            for batch in batches(order, SETTINGS["bs"]):
                train_step(model, optimizer, x_train[batch].contiguous(memory_format=FORMAT), y_train[batch])
        model.eval()
        correct = 0
        with Timer() as inference, torch.no_grad():
            for i in range(0, len(x_test), INFER_BATCH):
                correct += int((model(x_test[i : i + INFER_BATCH]).argmax(1) == y_test[i : i + INFER_BATCH]).sum())
        report(
            f"pytorch-eager-{MEMORY}",
            epoch=epoch,
            train_s=training.seconds,
            infer_s=inference.seconds,
            test_acc=correct / len(x_test),
            compile_s=warm.seconds,
            versions={"torch": torch.__version__},
        )


if __name__ == "__main__":
    main()
