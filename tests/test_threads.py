"""The kernels called from several Python threads at once: the GIL is released inside them, and
each call's scratch space is its own. (A file of its own, with only numpy and the kernels, so that
the cross-built AArch64 and the no-AVX runs of .ci/kernel_tests can run it.)"""

import threading

import numpy as np

import cnnfast
import cnnfast.functional as F


def test_kernels_called_from_four_python_threads_match_single_threaded_results(threads):
    """The GIL is released inside the kernels: several Python threads run them at once. Each
    thread must get, bit for bit, what a lone thread gets (no shared scratch buffers)."""
    cnnfast.set_num_threads(2)

    def inputs(seed):
        r = np.random.default_rng(seed)
        x = r.standard_normal((8, 4, 14, 14)).astype(np.float32)
        w = (r.standard_normal((16, 4, 3, 3)) * 0.2).astype(np.float32)
        b = r.standard_normal(16).astype(np.float32)
        xl = r.standard_normal((64, 300)).astype(np.float32)
        wl = (r.standard_normal((40, 300)) * 0.05).astype(np.float32)
        return x, w, b, xl, wl, b[:10].copy()

    def work(x, w, b, xl, wl, bl):
        y = F.conv2d(x, w, b, padding=1)
        dx, dw, db = F.conv2d_backward(x, w, y, padding=1)
        pooled, argmax = F.max_pool2d(F.relu(y), 2)
        z = F.linear(xl, wl, np.resize(bl, 40))
        gx, gw, gb = F.linear_backward(xl, wl, z)
        return [y, dx, dw, db, pooled, argmax, F.max_pool2d_backward(pooled, argmax, y.shape), z, gx, gw, gb]

    data = [inputs(seed) for seed in range(4)]
    expected = [[a.tobytes() for a in work(*d)] for d in data]  # one thread at a time
    assert len({e[0] for e in expected}) == 4  # the four threads really work on different inputs
    mismatches, errors = [], []
    barrier = threading.Barrier(4)

    def run(i):
        try:
            barrier.wait()
            for _ in range(25):
                got = [a.tobytes() for a in work(*data[i])]
                if got != expected[i]:
                    mismatches.append(i)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=300)
    assert not errors and not mismatches and not any(t.is_alive() for t in workers), (errors, mismatches)
