"""Keras 3 on TensorFlow on the cnnfast benchmark (see peer_common.py for what is measured).

Measured with: tensorflow-cpu 2.21.0, keras 3.15.1, numpy 2.4.6, Python 3.11
(bench/run_peers.sh installs them into their own venv).

    THREADS=2 python keras_tf.py
    JIT=1 python keras_tf.py        # model.compile(jit_compile=True); 0 for False; default "auto"

Keras's own training loop, as a Keras user writes it: model.fit(batch_size=BS, shuffle=True)
for one epoch at a time (Keras shuffles with its own generator, seeded by set_random_seed).
Warm-up: a fit on three batches (two full ones and one of the epoch's last size) and a predict,
not timed (compile_s); the weights and the optimizer are then reset to where they started.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from peer_common import INFER_BATCH, LR, SETTINGS, Timer, mnist, report  # noqa: E402

tf.config.threading.set_intra_op_parallelism_threads(SETTINGS["threads"])
tf.config.threading.set_inter_op_parallelism_threads(SETTINGS["threads"])

import keras  # noqa: E402
from keras import layers  # noqa: E402

JIT = os.environ.get("JIT", "auto")


def build():
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(64, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dropout(0.5),
            layers.Dense(10),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(LR),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile={"auto": "auto", "0": False, "1": True}[JIT],
    )
    return model


def main():
    keras.utils.set_random_seed(0)
    x_train, y_train, x_test, y_test = mnist("NHWC")
    bs = SETTINGS["bs"]
    model = build()
    initial = model.get_weights()

    with Timer() as warm:
        n = 2 * bs + (len(x_train) % bs or bs)
        model.fit(x_train[:n], y_train[:n], batch_size=bs, epochs=1, verbose=0)
        model.predict(x_test[:INFER_BATCH], batch_size=INFER_BATCH, verbose=0)
    model.set_weights(initial)
    for variable in model.optimizer.variables:  # Adam's moments and step count back to zero
        if "learning_rate" not in variable.path:
            variable.assign(tf.zeros_like(variable))

    for epoch in range(1, SETTINGS["epochs"] + 1):
        with Timer() as training:
            model.fit(x_train, y_train, batch_size=bs, epochs=1, shuffle=True, verbose=0)
        with Timer() as inference:
            predicted = model.predict(x_test, batch_size=INFER_BATCH, verbose=0).argmax(axis=1)
        report(
            f"keras-tf-fit-jit_{JIT}",
            epoch=epoch,
            train_s=training.seconds,
            infer_s=inference.seconds,
            test_acc=float((predicted == y_test).mean()),
            compile_s=warm.seconds,
            versions={"tensorflow": tf.__version__, "keras": keras.__version__},
            jit_compile=str(model.jit_compile),
        )


if __name__ == "__main__":
    main()
