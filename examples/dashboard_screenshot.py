"""Run the demo workload on a LocalKaasCluster and save a screenshot of its /kaas dashboard page.

    python examples/dashboard_screenshot.py [OUT.png]

Needs Chromium (Debian's ``chromium``) and the ``playwright`` package (in the
``test`` extra); the browser is driven headless.
"""

import shutil
import sys
import threading

from distributed import Client

from dask_kaas import LocalKaasCluster
from dask_kaas.demo import build_workload, run_workload


def main(out="docs/kaas-dashboard.png"):
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with (
        LocalKaasCluster(n_workers=2, device="host", device_memory="8MiB", dashboard_address="127.0.0.1:0") as cluster,
        Client(cluster) as client,
    ):
        url = cluster.dashboard_link.rsplit("/", 1)[0] + "/kaas"
        workload = build_workload(tenants=4, requests=1200, jacobi=20)
        runner = threading.Thread(
            target=run_workload, args=(client, cluster.store, workload), kwargs={"progress": False}
        )
        runner.start()
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=chromium,
                headless=True,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            page = browser.new_page(viewport={"width": 1500, "height": 1150})
            page.goto(url)
            page.wait_for_timeout(6000)  # the workload is running: let the time series fill
            page.screenshot(path=out, full_page=True)
            browser.close()
        runner.join()
    print(f"saved {out} ({url})")


if __name__ == "__main__":
    main(*sys.argv[1:])
