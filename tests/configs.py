"""Small run configs shared by the test modules (seconds per run on a CPU)."""
from __future__ import annotations

from seqmatch_engine.core.config import RunConfig


def tiny_run_config(name: str, seed: int, ipcs: tuple[int, ...], **distill) -> RunConfig:
    """Fashion-MNIST subset, ConvNet w8 d2, 2 experts x 3 epochs, one subset per entry of `ipcs`
    (4 iterations each), no selection; `distill` overrides any distill setting."""
    return RunConfig.from_dict({
        "name": name, "seed": seed, "device": "cpu",
        "data": {"dataset": "fashion-mnist-small", "train_per_class": 12, "val_per_class": 4},
        "model": {"width": 8, "depth": 2},
        "experts": {"num_experts": 2, "epochs": 3, "stage_epochs": 3, "batch_size": 32},
        "distill": {"subsets": [{"ipc": ipc, "interval": [0, 3], "iterations": 4} for ipc in ipcs],
                    "syn_steps": 3, "expert_epochs": 1, "lr_img": 10.0, "select_every": 0, "snapshot_every": 2,
                    **distill},
        "eval": {"epochs": 2, "num_nets": 1, "batch_size": 64},
    })
