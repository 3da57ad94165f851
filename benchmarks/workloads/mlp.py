"""MLP classifier on scikit-learn's digits: trained with NumPy (Adam) at setup, inference as a KaaS request.

64 inputs (pixels / 16) -> ``hidden`` ReLU units -> 10 classes, softmax. The
KaaS request is ``demo.mlp_request`` (``sgemm -> bias_relu -> sgemm ->
softmax_rows``), which has no output bias, so the network is *trained without
one* (the hidden layer has its bias ``b1``): what is trained is exactly what
the request computes. Weights ``w1``, ``b1``, ``w2`` are consts in the tenant's
namespace. The held-out split (512 images, 8 requests of 64) is classified from
the KaaS outputs; accuracy below 0.9 is a WrongResult, and every request's
probabilities are checked against the NumPy forward pass.
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.common import WrongResult
from dask_kaas.demo import mlp_reference, mlp_request

from .base import Workload

BATCH, TEST, CLASSES, MIN_ACCURACY = 64, 512, 10, 0.9


def load(seed: int = 0):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(x))
    test, train = order[:TEST], order[TEST:]
    return x[train], y[train], x[test], y[test]


def train(x, y, *, hidden: int, epochs: int, seed: int = 0, lr: float = 3e-3, batch: int = 64):
    """Plain NumPy Adam on softmax cross-entropy; no output bias (the request has none)."""
    rng = np.random.default_rng(seed)
    params = {
        "w1": rng.standard_normal((x.shape[1], hidden)) * np.sqrt(2.0 / x.shape[1]),
        "b1": np.zeros(hidden),
        "w2": rng.standard_normal((hidden, CLASSES)) * np.sqrt(1.0 / hidden),
    }
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    b1_, b2_, eps, step = 0.9, 0.999, 1e-8, 0
    onehot = np.eye(CLASSES)[y]
    for _ in range(epochs):
        for idx in np.array_split(rng.permutation(len(x)), max(1, len(x) // batch)):
            xb, tb = x[idx].astype(np.float64), onehot[idx]
            pre = xb @ params["w1"] + params["b1"]
            h = np.maximum(pre, 0)
            z = h @ params["w2"]
            p = np.exp(z - z.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            dz = (p - tb) / len(idx)
            dh = (dz @ params["w2"].T) * (pre > 0)
            grads = {"w2": h.T @ dz, "w1": xb.T @ dh, "b1": dh.sum(axis=0)}
            step += 1
            for k, g in grads.items():
                m[k] = b1_ * m[k] + (1 - b1_) * g
                v[k] = b2_ * v[k] + (1 - b2_) * g * g
                mhat, vhat = m[k] / (1 - b1_**step), v[k] / (1 - b2_**step)
                params[k] -= lr * mhat / (np.sqrt(vhat) + eps)
    return {k: p.astype(np.float32) for k, p in params.items()}


def forward(inputs: dict, consts: dict) -> np.ndarray:
    return mlp_reference(inputs["x"], consts["w1"], consts["b1"], consts["w2"]).astype(np.float32)


class MlpWorkload(Workload):
    labels: list[np.ndarray]

    def summary(self, outputs: dict[int, np.ndarray]) -> dict:
        missing = [i for i in range(len(self.cases)) if i not in outputs]
        if missing:
            raise WrongResult(f"mlp: no KaaS output for test chunks {missing}")
        pred = np.concatenate([outputs[i].argmax(axis=1) for i in range(len(self.cases))])
        truth = np.concatenate(self.labels)
        accuracy = float((pred == truth).mean())
        ref = np.concatenate([e.argmax(axis=1) for e in self.expected])
        out = {
            "accuracy": accuracy,
            "numpy_accuracy": float((ref == truth).mean()),
            "test_images": len(truth),
            "train_accuracy": self.parameters.get("train_accuracy"),
            "min_accuracy": MIN_ACCURACY,
        }
        if accuracy < MIN_ACCURACY:
            raise WrongResult(f"mlp: held-out accuracy {accuracy:.3f} from the KaaS outputs is below {MIN_ACCURACY}")
        return out


def setup(quick: bool, seed: int = 0) -> MlpWorkload:
    hidden, epochs = 128, (25 if quick else 40)
    xtr, ytr, xte, yte = load(seed)
    start = time.perf_counter()
    params = train(xtr, ytr, hidden=hidden, epochs=epochs, seed=seed)
    train_s = time.perf_counter() - start
    train_acc = float((forward({"x": xtr}, params).argmax(axis=1) == ytr).mean())
    tenant, prefix = "bench-mlp", "bench/mlp"
    request = mlp_request(prefix, batch=BATCH, d_in=xtr.shape[1], hidden=hidden, classes=CLASSES, tenant=tenant)
    cases = [{"x": np.ascontiguousarray(xte[i : i + BATCH])} for i in range(0, TEST, BATCH)]
    w = MlpWorkload(
        name="mlp",
        tenant=tenant,
        prefix=prefix,
        request=request,
        output="y",
        consts=params,
        cases=cases,
        numpy_fn=forward,
        rtol=1e-3,
        atol=1e-5,
        parameters={
            "dataset": "sklearn digits (1797 8x8 images)",
            "train_images": len(xtr),
            "test_images": TEST,
            "batch": BATCH,
            "hidden": hidden,
            "classes": CLASSES,
            "epochs": epochs,
            "optimizer": "Adam",
            "output_bias": "none (the request has none; trained without)",
            "train_s": train_s,
            "train_accuracy": train_acc,
            "kernels": list(request.kernel_names),
        },
    )
    w.labels = [yte[i : i + BATCH] for i in range(0, TEST, BATCH)]
    return w
