"""Sharded training (``training.fsdp``): torch's FSDP2 ``fully_shard`` over all processes of the run.

Each transformer block is one unit (its weights are gathered for its forward and backward and freed
after), the rest of the transformer and the audio projection one unit each. Every process holds 1/N of
the weights, gradients and AdamW state; gradients are reduce-scattered as averages, so a step trains
what DDP (and one process with the same global batch) trains, within float rounding.

What the trainer writes stays whole (unsharded) tensors, the same files as an unsharded run: the
helpers here gather one tensor at a time onto the CPU of the main process (every process takes part,
so no GPU ever holds more than one whole tensor extra), and put whole tensors back as shards when a
run resumes, so a state saved with or without sharding, on any number of processes, resumes either way.
"""

from __future__ import annotations

import warnings
from typing import Iterable, Optional

import torch
from torch import nn


def _dtensor_class():
    from torch.distributed.tensor import DTensor

    return DTensor


def is_sharded(tensor) -> bool:
    return isinstance(tensor, _dtensor_class())


def shard_modules(model: nn.Module, others: Iterable[nn.Module], device: torch.device, block_type: type) -> None:
    """``fully_shard`` every ``block_type`` submodule of ``model``, then ``model`` and each of ``others``,
    in place, over all processes of the default process group (gloo on CPUs, NCCL on GPUs)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    # FSDP2 warns once per module class that these modules return views (reshape, unbind), which an in-place
    # op of the caller would cut off from the backward all-gather. In training the model uses out-of-place
    # ops only (the in-place ones are in the no-grad inference path), and the test suite checks that two
    # sharded processes train the weights one process trains: the warning is silenced for these classes.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDP(LetsTalkBlock|LetsTalkTransformer|"
                                              r"AudioProjection)\) returned a view tensor")
    mesh = init_device_mesh(torch.device(device).type, (dist.get_world_size(),))
    for module in (model, *others):
        module.to(device)
    for block in [m for m in model.modules() if isinstance(m, block_type)]:
        fully_shard(block, mesh=mesh)
    for module in (model, *others):
        fully_shard(module, mesh=mesh)


def whole(tensor: torch.Tensor, keep: bool) -> Optional[torch.Tensor]:
    """The whole tensor on the CPU where ``keep`` (the main process), None elsewhere. For a shard every
    process must call this, in the same order: the shards are gathered."""
    if is_sharded(tensor):
        tensor = tensor.full_tensor()
    return tensor.detach().to("cpu").clone() if keep else None


def whole_state(state: dict, keep: bool) -> Optional[dict]:
    """``state`` (a state dict, or an optimiser's ``state_dict()``; nested dicts and lists) with every
    tensor whole on the CPU where ``keep``, None elsewhere (see :func:`whole`)."""
    def convert(value):
        if torch.is_tensor(value):
            return whole(value, keep)
        if isinstance(value, dict):
            return {key: convert(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(convert(item) for item in value)
        return value

    converted = convert(state)
    return converted if keep else None


def shard_like(tensor: torch.Tensor, parameter: torch.Tensor) -> torch.Tensor:
    """Whole ``tensor`` (the same on every process, read from one file) as ``parameter``'s shard: this
    process's part with the parameter's placement; no communication. Plain tensors pass through."""
    if not is_sharded(parameter) or is_sharded(tensor):
        return tensor
    from torch.distributed.tensor import distribute_tensor

    if tuple(tensor.shape) != tuple(parameter.shape):
        raise ValueError(f"a saved tensor of shape {tuple(tensor.shape)} does not fit a parameter of shape "
                         f"{tuple(parameter.shape)}")
    return distribute_tensor(tensor.to(parameter.device, parameter.dtype), parameter.device_mesh,
                             parameter.placements, src_data_rank=None)


def shard_optimizer_state(state: dict, optimizer: torch.optim.Optimizer) -> dict:
    """A whole optimiser state (``optimizer.state_dict()`` of an unsharded run, or gathered) with each
    parameter's tensors sharded like that parameter, for ``optimizer.load_state_dict``."""
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    ids = [i for group in state["param_groups"] for i in group["params"]]
    if len(ids) != len(parameters):
        raise ValueError(f"the saved optimiser state has {len(ids)} parameters, the model {len(parameters)}")
    by_id = dict(zip(ids, parameters))
    converted = {}
    for key, values in state["state"].items():
        parameter = by_id[key]
        converted[key] = {name: shard_like(value, parameter) if torch.is_tensor(value) and value.ndim else value
                          for name, value in values.items()}
    return {**state, "state": converted}
