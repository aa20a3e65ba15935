"""The overhead of going multi-node (issue 13): supernet training images/s and subnet measurements/s on a 2-node
local Ray cluster (a head and a worker node on 127.0.0.1, 1 CPU each) against one node with 2 CPUs — the same total
CPUs, the same workload, the same code path (`train_supernet_ray`, `tune_chunks`) as `quantsearch run`.

usage: RAY_AUTH_MODE=disabled python benchmarks/cluster.py [--images 4096] [--subnets 24] [--repeats 2]

Layouts alternate (one, two, one, two, ...) so drift on this shared machine hits both alike; each figure is the
median over repeats. Supernet: 2 Ray Train workers (SPREAD on two nodes), 1 epoch on `--images` Fashion-MNIST training
images from runs/bench/fp32-resnet8/model.pt; images/s from the workers' own epoch time (what the training loop
measures, without Ray start-up), and the whole fit() wall time beside it. Measurement: `--subnets` subnets of the
quick supernet (runs/bench/cqap-quick/supernet.pt) in chunks of 6 as Ray Tune trials, 2 at a time, BN recalibrated on
512 images, val top-1 on 2,000; subnets/s over the wall time including trial start-up. Overhead = 1 - two-node rate /
one-node rate (target <= 15 %). Writes benchmarks/results/cluster.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _common import ROOT, RUNS, write_result

sys.path.insert(0, str(ROOT / "tests" / "integration"))  # the test suite's local multi-node cluster

TARGET = 0.15
CHUNK = 6


def _supernet(cluster: Any, layout: str, images: int, rep: int) -> dict[str, Any]:
    """One supernet epoch on 2 Ray Train workers of `cluster`."""
    from quantsearch.config import JobSpec
    from quantsearch.distributed import train_supernet_ray

    ckpt = RUNS / "fp32-resnet8" / "model.pt"
    out = RUNS / "cluster" / f"{layout}-{rep}"
    spec = JobSpec.model_validate({
        "name": f"cluster-{layout}", "output_dir": str(out), "model": {"name": "resnet8"}, "device": "cpu",
        "supernet": {"epochs": 1, "batch_size": 128, "train_images": images, "bn_images": 512,
                     "checkpoint": str(ckpt), "table_bits": [8]},
        "scaling": {"max_failures": 0, "run_name": f"cluster-{layout}-{rep}-{int(time.time())}",
                    "storage_path": str(out / "ray"),
                    "placement_strategy": "SPREAD" if layout == "two-node" else "PACK"}})
    t0 = time.perf_counter()
    res = train_supernet_ray(spec, ckpt, out / "supernet", 2, False, cluster.gcs)
    wall = time.perf_counter() - t0
    secs = float(res.metrics["epoch_seconds"])
    nodes = sorted({w["node_id"] for w in res.workers})
    return {"images": images, "epoch_seconds": secs, "images_per_s": images / secs, "fit_wall_seconds": wall,
            "nodes_used": len(nodes)}


def _measure(cluster: Any, layout: str, subnets: int, rep: int) -> dict[str, Any]:
    """`subnets` subnets measured as Ray Tune trials, 2 at a time, on `cluster`."""
    import json

    from quantsearch.config import JobSpec
    from quantsearch.distributed.tune_sample import tune_chunks
    from quantsearch.supernet.sample import sample_configs
    from quantsearch.supernet.sample_job import chunks_of, context_args

    sn = RUNS / "cqap-quick" / "supernet.pt"
    spec = JobSpec.model_validate({
        "name": f"cluster-{layout}", "output_dir": str(RUNS / "cluster" / f"{layout}-{rep}"), "device": "cpu",
        "model": {"name": "resnet8"},
        "sample": {"checkpoint": str(sn), "bn_images": 512, "val_images": 2000, "seed": 0}})
    space = _space(sn)
    configs = sample_configs(space, subnets, 7, "all")
    storage = Path(spec.output_dir) / "tune"
    storage.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = [r for rs in tune_chunks(context_args(spec), 2, storage, "measure", cluster.gcs)(chunks_of(configs, CHUNK))
            for r in rs]
    wall = time.perf_counter() - t0
    placed = json.loads((storage / "measure-trials.json").read_text())
    assert len(rows) == subnets, (len(rows), subnets)
    return {"subnets": subnets, "chunk": CHUNK, "wall_seconds": wall, "subnets_per_s": subnets / wall,
            "nodes_used": len({p["node_id"] for p in placed}),
            "val_acc": {r["config"]: float(r["val_acc"]) for r in rows}}


_SPACES: dict[Path, Any] = {}


def _space(ckpt: Path) -> Any:
    """The supernet's search space (its layers and profile), loaded once."""
    if ckpt not in _SPACES:
        from quantsearch.quant import get_profile
        from quantsearch.space import SearchSpace, load_model
        from quantsearch.train import load_checkpoint

        raw = load_checkpoint(ckpt, kind="supernet")
        _SPACES[ckpt] = SearchSpace.for_model(load_model(raw), get_profile(raw["profile"]))
    return _SPACES[ckpt]


def main() -> None:
    """Alternate the two layouts, measure both workloads on each, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--subnets", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray_cluster import LocalCluster

    for need in (RUNS / "fp32-resnet8" / "model.pt", RUNS / "cqap-quick" / "supernet.pt"):
        if not need.exists():
            sys.exit(f"{need} is missing: run benchmarks/fp32_baseline.py and benchmarks/cqap_search.py --quick")
    t_all = time.perf_counter()
    runs: dict[str, list[dict[str, Any]]] = {"one-node": [], "two-node": []}
    for rep in range(args.repeats):
        for layout in ("one-node", "two-node"):
            t0 = time.perf_counter()
            cluster = (LocalCluster.start(workers=0, cpus=2) if layout == "one-node"
                       else LocalCluster.start(workers=1, cpus=1))
            start = time.perf_counter() - t0
            try:
                sn = _supernet(cluster, layout, args.images, rep)
                ray.shutdown()
                me = _measure(cluster, layout, args.subnets, rep)
                ray.shutdown()
            finally:
                ray.shutdown()
                cluster.stop()
            runs[layout].append({"cluster_start_seconds": start, "supernet": sn, "measure": me})
            print(f"[{rep}] {layout}: supernet {sn['images_per_s']:.0f} images/s (epoch {sn['epoch_seconds']:.1f}s, "
                  f"fit {sn['fit_wall_seconds']:.1f}s, {sn['nodes_used']} node(s)); measuring "
                  f"{me['subnets_per_s']:.3f} subnets/s ({me['wall_seconds']:.1f}s, {me['nodes_used']} node(s))")

    def med(layout: str, stage: str, key: str) -> float:
        return statistics.median(r[stage][key] for r in runs[layout])

    summary: dict[str, Any] = {}
    for stage, key in (("supernet", "images_per_s"), ("measure", "subnets_per_s")):
        one, two = med("one-node", stage, key), med("two-node", stage, key)
        summary[stage] = {f"one_node_{key}": one, f"two_node_{key}": two, "overhead": 1 - two / one,
                          "target_overhead_max": TARGET, "met": 1 - two / one <= TARGET}
        print(f"{stage}: one node {one:.3f}, two nodes {two:.3f} {key} -> overhead {100 * (1 - two / one):.1f} % "
              f"(target <= {100 * TARGET:.0f} %: {'met' if 1 - two / one <= TARGET else 'MISSED'})")
    same = [runs["one-node"][0]["measure"]["val_acc"][k] == runs["two-node"][0]["measure"]["val_acc"][k]
            for k in runs["one-node"][0]["measure"]["val_acc"]]
    write_result("cluster", {
        "settings": {"images": args.images, "subnets": args.subnets, "repeats": args.repeats, "train_workers": 2,
                     "tune_workers": 2, "one_node": "head with 2 CPUs", "two_node": "head + worker node, 1 CPU each",
                     "host": "both layouts on this machine (127.0.0.1): inter-node traffic is local TCP"},
        "runs": runs, "summary": summary,
        "same_val_acc_one_vs_two_nodes": all(same),
        "wall_seconds": time.perf_counter() - t_all,
        "note": ("median over repeats; images/s from the Ray Train workers' epoch time; subnets/s over the Tune "
                 "wall time including trial start-up; the machine has 2 cores shared with other work while measured"),
    })


if __name__ == "__main__":
    main()
