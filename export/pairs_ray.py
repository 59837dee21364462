"""Synthetic pairs spread over a Ray cluster: `tr0n-rt pairs DIR --ray auto`.

Each worker is a Ray actor that loads the pipeline's G and f once and makes whole shards
(pairs.make_shard: a function of the seed, the shard index, the batch size and the device); the driver
writes every shard itself (atomically, as make_pairs does), so workers need to read the pipeline folder but
never write anywhere, and the folder of pairs is the same a single process would write, byte for byte on
the same kind of device and CPU (tests/test_pairs_ray.py checks it on a local cluster).

    make_pipeline_pairs("work/sg2-clip", device="cuda", ray="auto", workers=8)   # export/workflow.py

Every node must see the pipeline folder at the same absolute path (a shared filesystem, or the same
image on every KubeRay pod). Interrupted runs resume as make_pairs does: shards already written are kept.
"""
from __future__ import annotations

from pathlib import Path

from tr0n_rt.errors import ConfigError

from .pairs import (
    PairsSpec,
    check_pair_args,
    make_shard,
    open_run,
    progress_bar,
    write_shard,
)

IN_FLIGHT = 2  # shards queued per worker: one computing, one waiting, so no worker idles between shards


class PairsWorker:
    """A Ray actor's state: the pipeline's models on `device`, ready to make shards."""

    def __init__(self, folder: str, device: str, threads: int | None, captioner: str | None,
                 captioner_config: dict | None):
        import torch

        from tr0n_rt.backends.torch import check_torch_device
        from tr0n_rt.pipeline_json import read_pipeline_json

        from .pipeline import load_models

        if threads:
            torch.set_num_threads(threads)
        folder = Path(folder)
        if not folder.is_dir():
            import socket

            raise ConfigError(f"{folder} is not on node {socket.gethostname()}: every Ray node must see the pipeline "
                              "folder at the same path (a shared filesystem, or the same image on every pod)")
        spec = read_pipeline_json(folder)  # the driver (workflow.make_pipeline_pairs) checked it is there
        self.dev = check_torch_device(torch, device)
        self.g, self.f = load_models(folder, spec)
        self.g.to(self.dev)
        self.f.to(self.dev)
        self.captions = {}
        if captioner is not None:
            from tr0n_rt.tokenizer import tokenizer_from_dict

            from .captioner_registry import build_captioner

            self.captions = {"captioner": build_captioner(captioner, captioner_config, device=device),
                             "tokenizer": tokenizer_from_dict(spec["tokenizer"])}

    def describe(self) -> dict:
        """What the driver needs for the PairsSpec: the models' sizes and families."""
        return {"latent_dim": self.g.latent.dim, "cond_dim": self.f.cond_dim, "generator": self.g.family,
                "condition_model": self.f.family}

    def provenance(self, count: int, shard_size: int, batch_size: int):
        """check_pair_args on this worker's models -> the caption provenance (None for image pairs)."""
        nucleus, provenance = check_pair_args(self.f, count, shard_size, batch_size, self.captions.get("captioner"),
                                              None, self.captions.get("tokenizer"))
        self.nucleus = nucleus
        return provenance

    def shard(self, spec: PairsSpec, i: int, batch_size: int):
        """Shard i of the run -> (tensors as numpy, metadata)."""
        state, meta = make_shard(self.g, self.f, spec, i, batch_size, self.dev, None,
                                 self.captions.get("captioner"), self.nucleus, self.captions.get("tokenizer"))
        return {k: v.numpy() for k, v in state.items()}, meta


def make_pairs_on_ray(folder: Path, count: int, seed: int, batch_size: int = 64, device: str = "cpu",
                      shards: tuple[int, int] | None = None, shard_size: int = 4096, progress: bool = True,
                      captioner: str | None = None, captioner_config: dict | None = None,
                      address: str | None = "auto", workers: int | None = None, cpus_per_worker: float = 1.0,
                      gpus_per_worker: float | None = None, threads: int | None = None) -> PairsSpec:
    """make_pipeline_pairs (export/workflow.py, which checks the arguments and calls this with ray=...) with
    the shards made by `workers` Ray actors (default: as many as the cluster has room for) and written
    here into folder/pairs. address: "auto" (the cluster `ray start` made), HOST:PORT or ray://HOST:PORT;
    None starts a local Ray instance. threads: torch threads per worker (default: Ray's, one per CPU
    reserved)."""
    try:
        import ray
    except ImportError:
        raise ConfigError("pairs on Ray need Ray: pip install 'tr0n-rt[export,serve]'") from None
    import torch

    from tr0n_rt.errors import Tr0nError
    from tr0n_rt.info import PAIRS_DIR

    if gpus_per_worker is None:
        gpus_per_worker = 1.0 if device.startswith("cuda") else 0.0
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        except ConnectionError as e:
            raise ConfigError(f"no Ray cluster at {address!r} ({str(e)[:200]}): start one (`ray start --head`), "
                              "give its address, or use --ray local for a Ray instance on this machine") from None
    room = ray.cluster_resources()
    fit = int(room.get("CPU", 0) // cpus_per_worker)
    if gpus_per_worker:
        fit = min(fit, int(room.get("GPU", 0) // gpus_per_worker))
    if fit < 1:
        raise ConfigError(f"the Ray cluster has {room.get('CPU', 0):g} CPUs and {room.get('GPU', 0):g} GPUs: not "
                          f"enough for one worker of {cpus_per_worker:g} CPUs and {gpus_per_worker:g} GPUs")
    n = min(workers or fit, fit, -(-count // shard_size))
    actor = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker)(PairsWorker)
    pool = [actor.remote(str(folder), device, threads, captioner, captioner_config) for _ in range(n)]
    try:
        try:
            sizes = ray.get(pool[0].describe.remote())
            provenance = ray.get([w.provenance.remote(count, shard_size, batch_size) for w in pool])[0]
        except ray.exceptions.RayTaskError as e:  # a worker refused (no folder on its node, no CUDA ...)
            if isinstance(e.cause, Tr0nError):
                raise e.cause from None
            raise
        spec = PairsSpec(count, shard_size, seed, sizes["latent_dim"], sizes["cond_dim"], sizes["generator"],
                         sizes["condition_model"], provenance)
        out = folder / PAIRS_DIR
        out.mkdir(exist_ok=True)
        start, stop, todo, done = open_run(out, spec, shards)
        bar = progress_bar(spec, start, stop, done, shards is None, progress)
        queue, running = list(todo), {}
        try:
            while queue or running:
                for w in pool:  # keep IN_FLIGHT shards queued on every worker
                    while queue and sum(1 for x in running.values() if x[1] is w) < IN_FLIGHT:
                        i = queue.pop(0)
                        running[w.shard.remote(spec, i, batch_size)] = (i, w)
                ready, _ = ray.wait(list(running), num_returns=1)
                i, _ = running.pop(ready[0])
                arrays, meta = ray.get(ready[0])
                write_shard(out, spec, i, {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}, meta,
                            len(queue) + len(running) + 1)
                bar.update(spec.shard_rows(i))
        finally:
            bar.close()
    finally:
        for w in pool:
            ray.kill(w)
        if started:
            ray.shutdown()
    return spec
