"""JAX / XLA on the cnnfast benchmark (see peer_common.py for what is measured).

Measured with: jax 0.10.2, jaxlib 0.10.2, optax 0.2.8, numpy 2.4.6, Python 3.11
(bench/run_peers.sh installs them into their own venv and runs this under taskset on THREADS
cores: XLA's CPU client does not take a thread count).

    taskset -c 0,1 python jax_xla.py

NHWC layout (XLA's native one on CPU); weights initialised as PyTorch does, U(+-1/sqrt(fan_in));
one jitted function per training step (forward, gradient, optax.adam update) called from a
Python loop over the shuffled batches, and one jitted forward for inference. Compilation (the
full batch and the epoch's last, smaller batch) is done before the timed epoch (compile_s).
"""

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import optax
from jax import lax
from peer_common import INFER_BATCH, LR, SETTINGS, Timer, batches, epoch_order, mnist, report

DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def init(key):
    def uniform(key, shape, fan_in):
        bound = 1.0 / np.sqrt(fan_in)
        return jax.random.uniform(key, shape, jnp.float32, -bound, bound)

    k = jax.random.split(key, 6)
    return {
        "conv1_w": uniform(k[0], (3, 3, 1, 32), 9),
        "conv1_b": uniform(k[1], (32,), 9),
        "conv2_w": uniform(k[2], (3, 3, 32, 64), 288),
        "conv2_b": uniform(k[3], (64,), 288),
        "linear_w": uniform(k[4], (1600, 10), 1600),
        "linear_b": uniform(k[5], (10,), 1600),
    }


def conv_relu_pool(x, w, b):
    y = jax.nn.relu(lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=DIMENSIONS) + b)
    return lax.reduce_window(y, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def logits(params, x, dropout_key=None):
    x = conv_relu_pool(x, params["conv1_w"], params["conv1_b"])
    x = conv_relu_pool(x, params["conv2_w"], params["conv2_b"])
    x = x.reshape(x.shape[0], -1)
    if dropout_key is not None:
        keep = jax.random.bernoulli(dropout_key, 0.5, x.shape)
        x = jnp.where(keep, x * 2.0, 0.0)
    return x @ params["linear_w"] + params["linear_b"]


optimizer = optax.adam(LR)


@jax.jit
def train_step(params, state, x, y, key):
    def loss(p):
        return optax.softmax_cross_entropy_with_integer_labels(logits(p, x, key), y).mean()

    value, grads = jax.value_and_grad(loss)(params)
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state, value


@jax.jit
def predict(params, x):
    return jnp.argmax(logits(params, x), axis=-1)


def main():
    x_train, y_train, x_test, y_test = mnist("NHWC")
    y_train, y_test = y_train.astype(np.int32), y_test.astype(np.int32)
    params = init(jax.random.PRNGKey(0))
    state = optimizer.init(params)
    key = jax.random.PRNGKey(1)
    bs = SETTINGS["bs"]

    with Timer() as warm:  # compile every batch shape the epoch will use, on throwaway results
        for size in sorted({bs, len(x_train) % bs or bs}):
            jax.block_until_ready(train_step(params, state, x_train[:size], y_train[:size], key))
        predict(params, x_test[:INFER_BATCH]).block_until_ready()

    for epoch in range(1, SETTINGS["epochs"] + 1):
        with Timer() as training:
            for batch in batches(epoch_order(epoch, len(x_train)), bs):
                key, step_key = jax.random.split(key)
                params, state, _ = train_step(params, state, x_train[batch], y_train[batch], step_key)
            jax.block_until_ready(params)
        with Timer() as inference:
            predicted = np.concatenate(
                [np.asarray(predict(params, x_test[i : i + INFER_BATCH])) for i in range(0, len(x_test), INFER_BATCH)]
            )
        report(
            "jax-xla-jit-step",
            epoch=epoch,
            train_s=training.seconds,
            infer_s=inference.seconds,
            test_acc=float((predicted == y_test).mean()),
            compile_s=warm.seconds,
            versions={"jax": jax.__version__, "jaxlib": jaxlib.__version__, "optax": optax.__version__},
        )


if __name__ == "__main__":
    main()
