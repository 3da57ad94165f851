"""Writes quickstart.ipynb and pipeline.ipynb (nbformat v4, outputs cleared) next to this file.

Edit the cells here, then run ``python examples/make_notebooks.py``; tests/test_examples.py executes both.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

QUICKSTART = [
    new_markdown_cell(
        "# dask-kaas quick start\n\n"
        "A request is a small graph of kernels with declared buffers. The cluster keeps `const` buffers "
        "(model weights) cached on its devices and runs a request with a plain `client.submit`.\n\n"
        "This notebook runs on the **host device** (NumPy memory, kernels run by their NumPy twins), "
        "so it needs no GPU."
    ),
    new_code_cell(
        "import numpy as np\n"
        "from distributed import Client, progress\n"
        "\n"
        "import dask_kaas\n"
        "from dask_kaas import BufferSpec, KernelSpec, Literal, LocalKaasCluster, Request, worker_stats"
    ),
    new_markdown_cell(
        "## A request\n\n"
        "`y = x + w`: `x` comes with the call, `w` is a const read from the store (then cached on the device), "
        "`y` comes back to the caller. Displaying a request shows its kernels, buffers and byte totals."
    ),
    new_code_cell(
        "n = 1024\n"
        'x = BufferSpec("x", 4 * n, dtype="float32", ephemeral=True)\n'
        'w = BufferSpec("w", 4 * n, key="notebook/w", const=True, dtype="float32")\n'
        'y = BufferSpec("y", 4 * n, dtype="float32", ephemeral=True)\n'
        'req = Request([KernelSpec("builtin", "vadd", grid=8, block=128, literals=[Literal("i", n)],\n'
        '                          arguments=[(x, "i"), (w, "i"), (y, "o")])],\n'
        '              tenant="alice")\n'
        "req"
    ),
    new_code_cell("req.visualize()  # the dataflow graph: buffers -> kernels -> buffers"),
    new_markdown_cell(
        "## A cluster and its store\n\n"
        "Two worker processes, each owning one host device. The store defaults to a file store in your data "
        "directory (`~/.local/share/dask-kaas/store`); "
        "a request's keys live in its tenant's namespace."
    ),
    new_code_cell(
        'cluster = LocalKaasCluster(n_workers=2, device="host", dashboard_address=":0")\n'
        "client = Client(cluster)\n"
        'cluster.store.put("notebook/w", np.ones(n, np.float32), namespace="alice")\n'
        "client"
    ),
    new_markdown_cell("## Submit"),
    new_code_cell(
        "out = client.submit(req, x=np.arange(n, dtype=np.float32)).result()\n"
        'assert np.array_equal(out["y"], np.arange(n, dtype=np.float32) + 1)\n'
        'out["y"][:4]'
    ),
    new_markdown_cell(
        "Many requests at once; Dask's own `progress` follows KaaS futures like any others. "
        "After the first request on each worker, `w` is served from the device cache."
    ),
    new_code_cell(
        "xs = [np.random.default_rng(i).standard_normal(n).astype(np.float32) for i in range(32)]\n"
        "futures = [client.submit(req, x=xi, pure=False) for xi in xs]\n"
        "progress(futures, notebook=False)\n"
        "for xi, result in zip(xs, client.gather(futures)):\n"
        '    np.testing.assert_allclose(result["y"], xi + 1)'
    ),
    new_markdown_cell("## Stats\n\nWhat each worker counted, and the scheduler's picture of the cluster."),
    new_code_cell(
        "stats = worker_stats(client)\n"
        'assert sum(s["hits"] for s in stats.values()) >= 30\n'
        '{addr: {k: s[k] for k in ("hits", "compulsory_misses", "bytes_from_store", "kernel_launches")}\n'
        " for addr, s in stats.items()}"
    ),
    new_code_cell("dask_kaas.cluster_state(client)"),
    new_code_cell("client.close()\ncluster.close()"),
]

PIPELINE = [
    new_markdown_cell(
        "# A pipeline: host pre-processing -> KaaS inference -> host post-processing\n\n"
        "One Dask graph over many inputs, built with `dask.delayed`: ordinary host tasks around a KaaS "
        "request (an MLP, `sgemm -> bias_relu -> sgemm -> softmax_rows`, weights const in the store). "
        "Every prediction is checked against NumPy."
    ),
    new_code_cell(
        "import dask\n"
        "import numpy as np\n"
        "from distributed import Client\n"
        "\n"
        "import dask_kaas\n"
        "from dask_kaas import LocalKaasCluster, worker_stats\n"
        "from dask_kaas.demo import mlp_reference, mlp_request"
    ),
    new_markdown_cell("## The model: weights in the store, a request that reads them"),
    new_code_cell(
        "batch, d_in, hidden, classes = 32, 64, 128, 10\n"
        "rng = np.random.default_rng(0)\n"
        "w1 = (rng.standard_normal((d_in, hidden)) / np.sqrt(d_in)).astype(np.float32)\n"
        "b1 = (0.1 * rng.standard_normal(hidden)).astype(np.float32)\n"
        "w2 = (rng.standard_normal((hidden, classes)) / np.sqrt(hidden)).astype(np.float32)\n"
        "\n"
        'cluster = LocalKaasCluster(n_workers=2, device="host", dashboard_address=":0")\n'
        "client = Client(cluster)\n"
        'for key, value in {"w1": w1, "b1": b1, "w2": w2}.items():\n'
        '    cluster.store.put(f"pipeline/mlp/{key}", value, namespace="pipeline")\n'
        "\n"
        'req = mlp_request("pipeline/mlp", batch=batch, d_in=d_in, hidden=hidden, classes=classes,\n'
        '                  tenant="pipeline")\n'
        "req"
    ),
    new_markdown_cell("## Host tasks around the request"),
    new_code_cell(
        "@dask.delayed\n"
        "def load(seed):\n"
        '    """Raw input: a batch of 8-bit samples."""\n'
        "    return np.random.default_rng(seed).integers(0, 256, (batch, d_in), dtype=np.uint8)\n"
        "\n"
        "\n"
        "@dask.delayed\n"
        "def preprocess(raw):\n"
        '    """Scale to [-1, 1] as float32, the request\'s input dtype and shape."""\n'
        "    return (raw.astype(np.float32) / 127.5 - 1.0).reshape(batch, d_in)\n"
        "\n"
        "\n"
        "@dask.delayed\n"
        "def postprocess(result):\n"
        '    """Class and confidence per row from the softmax probabilities."""\n'
        '    probs = result["y"]\n'
        "    return probs.argmax(axis=1), probs.max(axis=1)\n"
        "\n"
        "\n"
        "seeds = range(24)\n"
        "inputs = [preprocess(load(s)) for s in seeds]\n"
        "predictions = [postprocess(dask.delayed(req)(x=x)) for x in inputs]"
    ),
    new_markdown_cell("## Run the graph, check against NumPy"),
    new_code_cell(
        "xs, results = dask.compute(inputs, predictions)\n"
        "for x, (labels, confidence) in zip(xs, results):\n"
        "    expected = mlp_reference(x, w1, b1, w2)\n"
        "    assert np.array_equal(labels, expected.argmax(axis=1))\n"
        "    np.testing.assert_allclose(confidence, expected.max(axis=1), rtol=1e-4, atol=1e-5)\n"
        'print(f"{len(results)} batches of {batch}, all predictions match NumPy")\n'
        "results[0][0]"
    ),
    new_code_cell(
        "stats = worker_stats(client)\n"
        'print("kernel launches:", sum(s["kernel_launches"] for s in stats.values()),\n'
        '      "cache hits:", sum(s["hits"] for s in stats.values()))\n'
        "dask_kaas.cluster_state(client)"
    ),
    new_code_cell("client.close()\ncluster.close()"),
]


def notebook(cells) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"  # stable ids: regenerating gives the same file
    nbformat.validate(nb)
    return nb


def main() -> None:
    for name, cells in (("quickstart.ipynb", QUICKSTART), ("pipeline.ipynb", PIPELINE)):
        nbformat.write(notebook(cells), HERE / name)
        print("wrote", HERE / name)


if __name__ == "__main__":
    main()
