"""Training on several processes: two CPU processes (gloo) started by torchrun train exactly what one
process trains with the same global batch; one writer; resume across process counts; the output lock."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from letstalk_core.checkpoints import load_checkpoint
from letstalk_core.training.config import config_from_dict
from letstalk_core.training.trainer import LOCK_NAME, TransformerTrainer, local_batch_size, output_lock, train
from tests.core.test_training import needs_espeak, tiny_config, tiny_vae  # noqa: F401 (fixture)
from tests.helpers import REPO

pytestmark = [needs_espeak, pytest.mark.slow]  # each run starts fresh Python processes that import torch

# each process of the run records, after every step, the loss, the data positions it trained and a
# checksum of its weights
DRIVER = """
import json, sys
from letstalk_core.training.config import load_config
from letstalk_core.training.trainer import TransformerTrainer

config, record_dir, resume = load_config(sys.argv[1]), sys.argv[2], sys.argv[3] == "resume"
trainer = TransformerTrainer(config, resume=resume, show_progress=False)
acc = trainer.accelerator
record = {"processes": acc.num_processes, "rank": acc.process_index, "steps": []}

def on_step(step, loss):
    weights = list(acc.unwrap_model(trainer.model).parameters())
    whole = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in weights]  # sharded (fsdp): gathered
    record["steps"].append({"step": step, "loss": loss, "positions": list(trainer.batch_positions(trainer.micro_step - 1)),
                            "checksum": float(sum(p.detach().double().sum() for p in whole)),
                            "held": sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in weights),
                            "total": sum(p.numel() for p in whole)})

trainer.train(on_step=on_step)
with open(f"{record_dir}/rank{acc.process_index}.json", "w") as f:
    json.dump(record, f)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(processes: int, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _config(tmp_path: Path, name: str, vae: Path, **training) -> Path:
    values = tiny_config(tmp_path / name, vae, **{"batch_size": 4, "max_steps": 3, **training})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _one_process(tmp_path: Path, name: str, vae: Path, **training) -> tuple[TransformerTrainer, list[float]]:
    trainer = TransformerTrainer(config_from_dict(tiny_config(tmp_path / name, vae, **{"batch_size": 4, "max_steps": 3,
                                                                                       **training})),
                                 show_progress=False)
    losses: list[float] = []
    trainer.train(on_step=lambda step, loss: losses.append(loss))
    return trainer, losses


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return dict(load_checkpoint(path).model.state_dict())


def test_two_processes_train_what_one_process_trains(tmp_path, tiny_vae):
    (tmp_path / "driver.py").write_text(DRIVER)
    records = tmp_path / "records"
    records.mkdir()
    result = _torchrun(2, str(tmp_path / "driver.py"), str(_config(tmp_path, "two", tiny_vae)), str(records), "fresh")
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [json.loads((records / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["processes"] for r in ranks] == [2, 2] and [r["rank"] for r in ranks] == [0, 1]
    alone, losses = _one_process(tmp_path, "one", tiny_vae)
    for step, (first, second) in enumerate(zip(ranks[0]["steps"], ranks[1]["steps"])):
        # the ranks drew different clips, together the ones a single process draws for the same global batch
        assert set(first["positions"]).isdisjoint(second["positions"])
        assert sorted(first["positions"] + second["positions"]) == list(range(4 * step, 4 * step + 4))
        # gradients averaged: the weights are the same on both ranks after every step
        assert first["checksum"] == second["checksum"], step
        # the loss of the global batch, the same on both ranks and as one process's (float tolerance)
        assert first["loss"] == second["loss"]
        assert first["loss"] == pytest.approx(losses[step], rel=1e-4), (step, first["loss"], losses)
    assert len(ranks[0]["steps"]) == 3
    two = _weights(tmp_path / "two" / "letstalk.safetensors")
    one = _weights(tmp_path / "one" / "letstalk.safetensors")
    for key, value in one.items():
        torch.testing.assert_close(two[key], value, rtol=1e-4, atol=1e-5, msg=key)
    # one writer: one set of files, and no lock left behind
    written = sorted(str(p.relative_to(tmp_path / "two")) for p in (tmp_path / "two").rglob("*") if p.is_file())
    assert written == ["checkpoints/step_0000003.safetensors", "config.yaml", "letstalk.safetensors",
                       "probes.jsonl", "training_state.pt"], written
    # the probes once per save, as one process writes them (not once per process)
    probes = [(tmp_path / run / "probes.jsonl").read_text().splitlines() for run in ("one", "two")]
    assert len(probes[1]) == len(probes[0]) > 0


def test_two_sharded_processes_train_what_one_process_trains_and_resume_exactly(tmp_path, tiny_vae):
    """training.fsdp: each process holds half of the weights (and of their gradients and AdamW state),
    trains what one process trains, writes the same whole files, and a sharded resume continues exactly."""
    (tmp_path / "driver.py").write_text(DRIVER)
    records = tmp_path / "records"
    records.mkdir()
    # clipping from the first step, so that the gradient norm over sharded gradients is checked too, and
    # gradient checkpointing (the presets') inside the sharded blocks
    sharded = dict(fsdp=True, grad_clip=0.05, grad_clip_after=0, gradient_checkpointing=True)
    result = _torchrun(2, str(tmp_path / "driver.py"), str(_config(tmp_path, "fsdp", tiny_vae, max_steps=2, **sharded)),
                       str(records), "fresh")
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [json.loads((records / f"rank{r}.json").read_text()) for r in (0, 1)]
    resumed = _torchrun(2, str(tmp_path / "driver.py"), str(_config(tmp_path, "fsdp", tiny_vae, max_steps=4, **sharded)),
                        str(records), "resume")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    later = [json.loads((records / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [s["step"] for s in later[0]["steps"]] == [3, 4]
    _, losses = _one_process(tmp_path, "one", tiny_vae, max_steps=4, grad_clip=0.05, grad_clip_after=0)
    for rank in (0, 1):
        ranks[rank]["steps"] += later[rank]["steps"]
    for step, (first, second) in enumerate(zip(ranks[0]["steps"], ranks[1]["steps"])):
        assert sorted(first["positions"] + second["positions"]) == list(range(4 * step, 4 * step + 4))
        # sharded: each process holds about half of the weights, together all of them
        assert first["held"] + second["held"] == first["total"] and max(first["held"], second["held"]) < 0.6 * first["total"]
        assert first["checksum"] == pytest.approx(second["checksum"], rel=1e-12), step
        assert first["loss"] == second["loss"]
        assert first["loss"] == pytest.approx(losses[step], rel=1e-4), (step, first["loss"], losses)
    assert len(ranks[0]["steps"]) == 4
    one, two = _weights(tmp_path / "one" / "letstalk.safetensors"), _weights(tmp_path / "fsdp" / "letstalk.safetensors")
    assert two.keys() == one.keys()
    for key, value in one.items():
        torch.testing.assert_close(two[key], value, rtol=1e-4, atol=1e-5, msg=key)
    written = sorted(str(p.relative_to(tmp_path / "fsdp")) for p in (tmp_path / "fsdp").rglob("*") if p.is_file())
    assert written == ["checkpoints/step_0000002.safetensors", "checkpoints/step_0000004.safetensors", "config.yaml",
                       "letstalk.safetensors", "probes.jsonl", "training_state.pt"], written
    # the state holds whole tensors, the same layout as an unsharded run's: it resumes on one process too
    state = torch.load(tmp_path / "fsdp" / "training_state.pt", weights_only=True)
    alone = torch.load(tmp_path / "one" / "training_state.pt", weights_only=True)
    assert {k: tuple(v.shape) for k, v in state["model"].items()} == {k: tuple(v.shape) for k, v in alone["model"].items()}
    assert [tuple(p.shape) for p in state["ema"]["shadow_params"]] == [tuple(p.shape) for p in alone["ema"]["shadow_params"]]
    assert state["optimizer"]["state"].keys() == alone["optimizer"]["state"].keys()


def test_gradient_accumulation_on_two_sharded_processes_trains_what_one_process_trains(tmp_path, tiny_vae):
    """2 batches of 4 per optimiser step: a sharded process reduce-scatters each batch's gradient (an FSDP2
    module has no no_sync) and the shards add up to what one process accumulates."""
    (tmp_path / "driver.py").write_text(DRIVER)
    records = tmp_path / "records"
    records.mkdir()
    settings = dict(gradient_accumulation_steps=2, max_steps=2)
    result = _torchrun(2, str(tmp_path / "driver.py"), str(_config(tmp_path, "fsdp", tiny_vae, fsdp=True, **settings)),
                       str(records), "fresh")
    assert result.returncode == 0, result.stderr[-4000:]
    steps = json.loads((records / "rank0.json").read_text())["steps"]
    _, losses = _one_process(tmp_path, "one", tiny_vae, **settings)
    assert [s["step"] for s in steps] == [0, 1, 1, 2]  # optimiser steps after each of the 4 batches
    assert [s["loss"] for s in steps] == pytest.approx(losses, rel=1e-4)
    one, two = _weights(tmp_path / "one" / "letstalk.safetensors"), _weights(tmp_path / "fsdp" / "letstalk.safetensors")
    for key, value in one.items():
        torch.testing.assert_close(two[key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_a_run_of_two_processes_resumes_on_one_as_if_never_stopped(tmp_path, tiny_vae):
    (tmp_path / "driver.py").write_text(DRIVER)
    records = tmp_path / "records"
    records.mkdir()
    first = _torchrun(2, str(tmp_path / "driver.py"), str(_config(tmp_path, "run", tiny_vae, max_steps=2)),
                      str(records), "fresh")
    assert first.returncode == 0, first.stderr[-4000:]
    resumed = TransformerTrainer(config_from_dict(tiny_config(tmp_path / "run", tiny_vae, batch_size=4, max_steps=4)),
                                 resume=True, show_progress=False)
    assert resumed.step == 2
    resumed.train()
    straight, _ = _one_process(tmp_path, "straight", tiny_vae, max_steps=4)
    for key, value in _weights(tmp_path / "straight" / "letstalk.safetensors").items():
        torch.testing.assert_close(_weights(tmp_path / "run" / "letstalk.safetensors")[key], value, rtol=1e-4,
                                   atol=1e-5, msg=key)


def test_the_command_line_runs_on_two_processes_and_refuses_an_uneven_batch(tmp_path, tiny_vae):
    # sharded (--fsdp) with the presets' bf16: the sharded forward runs under autocast as a prepared one does
    good = _torchrun(2, "-m", "letstalk_core", "train", "--fsdp", "--config",
                     str(_config(tmp_path, "cli", tiny_vae, max_steps=2, mixed_precision="bf16")))
    assert good.returncode == 0, good.stderr[-4000:]
    # one line for the one checkpoint (the other process writes nothing and says nothing), no FSDP view warnings
    assert good.stdout.count("checkpoint: ") == 1 and f"checkpoint: {tmp_path / 'cli' / 'letstalk.safetensors'}" in good.stdout
    assert "returned a view tensor" not in good.stderr
    trained = load_checkpoint(tmp_path / "cli" / "letstalk.safetensors")
    assert trained.training["batch_size"] == 4
    assert all(torch.isfinite(v).all() for v in trained.model.state_dict().values())
    assert not (tmp_path / "cli" / LOCK_NAME).exists()
    bad = _torchrun(2, "-m", "letstalk_core", "train", "--config", str(_config(tmp_path, "uneven", tiny_vae,
                                                                               batch_size=3)))
    assert bad.returncode != 0
    assert "training.batch_size 3 is the global batch" in bad.stderr and "multiple of the 2 processes" in bad.stderr
    assert not (tmp_path / "uneven" / "checkpoints").exists()


def test_fsdp_settings_are_checked_and_accelerates_own_sharding_is_refused(tmp_path, tiny_vae, caplog):
    from accelerate.utils import DistributedType

    from letstalk_core.__main__ import build_parser
    from letstalk_core.training.cli import _overrides
    from letstalk_core.training.trainer import _refuse_accelerate_sharding

    args = build_parser().parse_args(["train", "--preset", "personal", "--fsdp"])
    assert _overrides(args)["training"]["fsdp"] is True
    with pytest.raises(ValueError, match="training.fsdp must be true or false"):
        config_from_dict(tiny_config(tmp_path / "bad", tiny_vae, fsdp="yes"))
    with pytest.raises(ValueError, match="training.fsdp does not work with mixed_precision fp16 .* use bf16 or no"):
        config_from_dict(tiny_config(tmp_path / "bad", tiny_vae, fsdp=True, mixed_precision="fp16"))
    # what `accelerate launch` with an FSDP or DeepSpeed config sets (neither can start on this CPU)
    for kind in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        launched = type("Launched", (), {"distributed_type": kind})()
        with pytest.raises(ValueError, match=f"accelerate's {kind.name} config, which this trainer does not support; "
                                             "launch with plain multi-GPU .* add --fsdp"):
            _refuse_accelerate_sharding(launched)
    # one process: nothing to shard, trained as usual
    caplog.set_level("INFO", logger="letstalk_core.training.trainer")
    trainer = TransformerTrainer(config_from_dict(tiny_config(tmp_path / "alone", tiny_vae, fsdp=True, max_steps=1)),
                                 show_progress=False)
    assert not trainer.sharded and "one process, nothing to shard" in caplog.text
    trainer.train()
    assert (tmp_path / "alone" / "letstalk.safetensors").is_file()


SHARD_ERRORS = """
import torch, torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor
from letstalk_core.training.sharding import shard_like, shard_optimizer_state

dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
parameter = torch.nn.Parameter(distribute_tensor(torch.zeros(4, 3), init_device_mesh("cpu", (1,)), [Shard(0)]))
for call in (lambda: shard_like(torch.zeros(5, 3), parameter),
             lambda: shard_optimizer_state({"state": {}, "param_groups": [{"params": [0, 1]}]},
                                           torch.optim.AdamW([parameter]))):
    try:
        call()
    except ValueError as error:
        print("ERROR", error)
dist.destroy_process_group()
"""


def test_a_saved_state_that_does_not_fit_the_sharded_model_is_refused_clearly():
    # one process with a gloo group of its own (a fresh Python: no process group left in this one)
    result = subprocess.run([sys.executable, "-c", SHARD_ERRORS], cwd=REPO, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-3000:]
    errors = [line for line in result.stdout.splitlines() if line.startswith("ERROR ")]
    assert errors == ["ERROR a saved tensor of shape (5, 3) does not fit a parameter of shape (4, 3)",
                      "ERROR the saved optimiser state has 2 parameters, the model 1"], result.stdout


def test_the_global_batch_is_shared_out_evenly_or_refused():
    assert local_batch_size(8, 2) == 4 and local_batch_size(4, 1) == 4
    with pytest.raises(ValueError, match="training.batch_size 6 is the global batch .* multiple of the 4 processes; "
                                         "use 4 or 8, or start 2 processes"):
        local_batch_size(6, 4)


def test_a_second_run_into_the_same_folder_is_refused_and_a_dead_runs_lock_is_taken_over(tmp_path, tiny_vae):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("the first run's file")
    (out / LOCK_NAME).write_text(str(os.getpid()))  # a live process holds the folder
    config = config_from_dict(tiny_config(out, tiny_vae, max_steps=1))
    with pytest.raises(RuntimeError, match=f"output folder .*busy.* is in use by another training run \\(process "
                                           f"{os.getpid()}\\)"):
        train(config, show_progress=False)
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME, "keep.txt"]  # nothing touched
    assert (out / "keep.txt").read_text() == "the first run's file"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / LOCK_NAME).write_text(dead.stdout.strip())  # that process has exited
    train(config, show_progress=False)
    assert (out / "letstalk.safetensors").is_file() and not (out / LOCK_NAME).exists()
    with output_lock(out):
        assert (out / LOCK_NAME).read_text() == str(os.getpid())
    assert not (out / LOCK_NAME).exists()
