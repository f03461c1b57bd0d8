"""A throwaway multi-node Ray cluster on this machine, for tests/test_sweep.py.

    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_TMPDIR=/tmp/ray-x python -m tests.ray_cluster 2

starts a head without CPUs (so it runs no task, like a dedicated head node) and N worker nodes
with one CPU each, all on 127.0.0.1 (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps Ray on the loopback
address), prints `address HOST:PORT`, and shuts the cluster down when its stdin closes.
"""
from __future__ import annotations

import os
import sys


def main() -> None:
    nodes = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0":
        sys.exit("set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: the test cluster must stay on 127.0.0.1")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        for _ in range(nodes):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        print(f"address {cluster.address}", flush=True)
        sys.stdin.read()
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()
