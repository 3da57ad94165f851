"""Many lightweight Dask workers in one process (one event loop), for the scale suite.

    python -m benchmarks.worker_pool SCHEDULER_ADDRESS N [--kaas] [--device host] [--memory 16MiB] [--store URL]

Each worker has one thread and the ``GPU`` resource; with ``--kaas`` each also carries the KaaS
worker plugin (a host device of ``--memory``). The process runs until its standard input closes,
so the parent ends it by closing the pipe (or killing it).
"""

from __future__ import annotations

import argparse
import asyncio
import sys


async def run(address: str, n: int, kaas: bool, device: str, memory: str, store: str | None) -> None:
    from distributed import Worker

    workers = []
    for i in range(n):
        plugins = []
        if kaas:
            from dask_kaas.plugins.worker import KaasWorkerPlugin

            plugins.append(KaasWorkerPlugin(device=device, device_memory=memory, store=store))
        workers.append(
            Worker(
                address,
                nthreads=1,
                resources={"GPU": 1},
                plugins=plugins,
                name=f"pool-{i}",
                dashboard=False,
                memory_limit=0,
                validate=False,
            )
        )
    await asyncio.gather(*workers)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes our stdin
    await asyncio.gather(*(w.close(nanny=False, executor_wait=False) for w in workers), return_exceptions=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("address")
    parser.add_argument("n", type=int)
    parser.add_argument("--kaas", action="store_true")
    parser.add_argument("--device", default="host")
    parser.add_argument("--memory", default="16MiB")
    parser.add_argument("--store", default=None)
    args = parser.parse_args(argv)
    asyncio.run(run(args.address, args.n, args.kaas, args.device, args.memory, args.store))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
