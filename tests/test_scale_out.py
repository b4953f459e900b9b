"""Scale-out on this machine, for real: FSDP2 over gloo with 2 CPU processes, two "nodes" (DDP and FSDP2, the Slurm
script's launch among them), each ending in the adapter a one-process run of the same global batch gives."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from support.launch import CLI, run, state_dict
from test_training import workspace  # noqa: F401  (the module's sample + tiny-model workspace)

from vlfeedback_kit.training.commands import ACCELERATE, RECIPES

REPO = RECIPES.parent.parent
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch"]
SCRIPT = [str(RECIPES.parent / "dpo.py"), "--config", str(RECIPES / "tiny.yaml")]
SPEEDUPS = [
    "--share_prompt_prefix",
    "true",
    "--activation_checkpointing",
    "true",
    "--checkpoint_policy",
    "save_matmuls",
]
COMMON = ["--max_steps", "2", "--warmup_steps", "0", "--ref_precompute", "false", *SPEEDUPS]
"""Two optimizer steps with every kit speedup the tiny Qwen2-VL runs in fp32 (LoRA input sharing needs autocast)."""
TOLERANCE = 1e-5


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def environment() -> dict[str, str]:
    return {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}


def wait_for_listener(port: int, first: subprocess.Popen, deadline_s: float = 300.0) -> None:
    """Until node 0 holds the rendezvous port. On one machine both "nodes" match the endpoint's host, so a node 1
    that started first would host torch's c10d store on that port itself, and node 0's accelerate would then refuse
    the port as in use; on real nodes only node 0's host matches."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline and first.poll() is None:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)  # polling for a state, not timing anything
    raise AssertionError(f"node 0 did not listen on port {port} (exit code {first.poll()})")


def run_nodes(commands: list[list[str]], cwd: Path, env: dict[str, str] | None = None, port: int | None = None,
              limit_s: float = 600.0) -> list[str]:  # fmt: skip
    """Start every command (one per "node"; with ``port``, the others once the first holds it) and wait for all;
    each must succeed. A node that fails stops the others at once (a lone node would wait for its peer until the
    rendezvous times out). Their outputs."""
    with tempfile.TemporaryDirectory() as folder:
        logs = [Path(folder) / f"node{i}.log" for i in range(len(commands))]
        started = []
        try:
            for i, command in enumerate(commands):
                with logs[i].open("w") as log:  # the child keeps its own copy of the descriptor
                    started.append(subprocess.Popen(command, cwd=cwd, env=env or environment(), stdout=log,
                                                    stderr=subprocess.STDOUT, start_new_session=True))  # fmt: skip
                if i == 0 and port is not None and len(commands) > 1:
                    wait_for_listener(port, started[0])
            deadline = time.monotonic() + limit_s
            while any(p.poll() is None for p in started) and time.monotonic() < deadline:
                if any(p.poll() not in (None, 0) for p in started):
                    break
                time.sleep(0.5)  # polling for exits, not timing anything
        finally:
            for process in started:  # each node with its launcher's workers (its own process group)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        outputs = [log.read_text(errors="replace") for log in logs[: len(started)]]
    for process, output in zip(started, outputs):
        assert process.returncode == 0, output[-3000:]
    return outputs


def flags(root: Path, name: str) -> list[str]:
    return [
        *COMMON,
        "--output_dir",
        str(root / "runs" / name),
        "--ref_cache_dir",
        str(root / f"{name}-cache"),
    ]


def losses(out: Path) -> list[float]:
    return [e["loss"] for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]


def assert_same_adapter(out: Path, reference: dict[str, torch.Tensor]) -> None:
    adapter = state_dict(out)
    assert set(adapter) == set(reference) and all("lora_" in k and "visual" not in k for k in adapter)
    assert max((adapter[k] - reference[k]).abs().max().item() for k in adapter) < TOLERANCE


@pytest.fixture(scope="module")
def one_process(workspace):  # noqa: F811
    """The single-process run of the same rows: per-device batch 4 x accumulation 2 = the 2-process global batch."""
    out = workspace / "runs" / "one-process"
    run([*LAUNCH, "--config_file", str(ACCELERATE / "cpu.yaml"), *SCRIPT, *flags(workspace, "one-process"),
         "--per_device_train_batch_size", "4"], workspace)  # fmt: skip
    return SimpleNamespace(out=out, adapter=state_dict(out), losses=losses(out))


def test_fsdp2_on_two_cpu_processes_shards_matches_one_process_and_resumes(workspace, one_process):  # noqa: F811
    """training/accelerate/fsdp2.yaml on 2 CPU processes: accelerate's FSDP2 (DTensor parameters) over gloo, every
    kit speedup on, the same losses and adapter as one process; a sharded checkpoint resumes to the same adapter."""
    out = workspace / "runs" / "fsdp2"
    command = [*LAUNCH, "--config_file", str(ACCELERATE / "fsdp2.yaml"), "--num_processes", "2",
               "--mixed_precision", "no", "--main_process_port", str(free_port()), *SCRIPT, *flags(workspace, "fsdp2"),
               "--save_strategy", "steps", "--save_steps", "1"]  # fmt: skip
    done = run(command, workspace)
    assert "the kit prepares the model with accelerate's FSDP2" in done.stderr  # said on the console
    info = json.loads((out / "run_info.json").read_text())
    assert info["distributed"] == {
        "distributed_type": "FSDP", "fsdp_version": 2, "world_size": 2, "num_machines": 1, "parameters_sharded": True,
        "requested": {"distributed_type": "FSDP", "fsdp_version": 2}, "warnings": [],
    }  # fmt: skip
    assert {"ref_cache", "share_image_features", "share_prompt_prefix", "save_matmuls"} <= set(info["speedups"])
    assert losses(out) == pytest.approx(one_process.losses, abs=TOLERANCE) and len(losses(out)) == 2
    assert_same_adapter(out, one_process.adapter)  # a normal, whole PEFT adapter, gathered from the shards
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"
    assert "FSDP (FSDP2), 2 process(es) on 1 machine(s), parameters sharded" in (out / "README.md").read_text()
    shards = sorted(p.name for p in (out / "checkpoint-1" / "pytorch_model_fsdp_0").glob("*.distcp"))
    assert shards == ["__0_0.distcp", "__1_0.distcp"]  # one shard per process, not a full copy

    run([*command, "--resume_from_checkpoint", str(out / "checkpoint-1")], workspace)
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2
    assert_same_adapter(out, one_process.adapter)


def two_node_command(config: str, rank: int, port: int, root: Path, name: str) -> list[str]:
    """One "node" of two on this machine, as docs/scale-out.md shows it."""
    return [*LAUNCH, "--config_file", str(ACCELERATE / config), "--num_machines", "2", "--num_processes", "2",
            "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
            "--rdzv_backend", "c10d", "--mixed_precision", "no", *SCRIPT, *flags(root, name)]  # fmt: skip


def test_two_nodes_fsdp2_end_in_the_one_node_adapter(workspace, one_process):  # noqa: F811
    port = free_port()
    commands = [two_node_command("fsdp2.yaml", rank, port, workspace, "nodes-fsdp2") for rank in (0, 1)]
    run_nodes(commands, workspace, port=port)
    out = workspace / "runs" / "nodes-fsdp2"
    distributed = json.loads((out / "run_info.json").read_text())["distributed"]
    assert distributed["num_machines"] == 2 and distributed["world_size"] == 2 and distributed["parameters_sharded"]
    assert_same_adapter(out, one_process.adapter)


def test_slurm_script_two_ddp_nodes_end_in_the_one_node_adapter(workspace, one_process, tmp_path):  # noqa: F811
    """training/slurm/silkie.sbatch as written, with `srun` starting its command as 2 tasks here (SLURM_PROCID 0, 1)
    and `scontrol` naming this machine: multi_node.yaml, machine rank from SLURM_PROCID, c10d rendezvous."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(
        # task 0 first, task 1 once task 0 holds the rendezvous port (on one machine either could host the c10d
        # store; see wait_for_listener); the first task to fail stops the other
        '#!/bin/bash\nSLURM_PROCID=0 "$@" & first=$!\n'
        "for _ in $(seq 1500); do (echo > /dev/tcp/127.0.0.1/$MAIN_PROCESS_PORT) 2>/dev/null && break\n"
        "  kill -0 $first 2>/dev/null || break; sleep 0.2; done\n"
        'SLURM_PROCID=1 "$@" & second=$!\n'
        "wait -n; rc=$?; if [ $rc -ne 0 ]; then kill $first $second 2>/dev/null; wait; exit $rc; fi\n"
        "wait -n; exit $?\n"
    )
    (bin_dir / "scontrol").write_text("#!/bin/bash\necho 127.0.0.1\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = environment() | {
        "PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "node[0-1]", "GPUS_PER_NODE": "1",
        "MAIN_PROCESS_PORT": str(free_port()), "LAUNCH_FLAGS": "--mixed_precision no",
        "RECIPE": "training/recipes/tiny.yaml",
    }  # fmt: skip
    out = workspace / "runs" / "nodes-ddp"
    sources = ["--model_name_or_path", str(workspace / "runs" / "tiny-qwen2-vl"),
               "--dataset_name", str(workspace / "vlfeedback")]  # fmt: skip
    run_nodes([["bash", str(REPO / "training" / "slurm" / "silkie.sbatch"), *sources, *flags(workspace, "nodes-ddp")]],
              REPO, env)  # fmt: skip
    distributed = json.loads((out / "run_info.json").read_text())["distributed"]
    assert distributed["distributed_type"] == "MULTI_CPU" and distributed["num_machines"] == 2
    assert not distributed["parameters_sharded"]
    assert_same_adapter(out, one_process.adapter)


def test_fsdp1_or_deepspeed_that_runs_as_something_else_is_a_warning(monkeypatch):
    """A launch that became another distributed type than its config asked: on the console and in the records."""
    from accelerate.utils import DistributedType

    from vlfeedback_kit.training.distributed import settle_launch

    def trainer(kind):
        accelerator = SimpleNamespace(distributed_type=kind, num_processes=2, is_main_process=True)
        return SimpleNamespace(accelerator=accelerator, args=SimpleNamespace(activation_checkpointing=False))

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    fsdp1 = trainer(DistributedType.MULTI_CPU)
    settle_launch(fsdp1)
    assert fsdp1.accelerator.distributed_type == DistributedType.MULTI_CPU  # FSDP1 on CPUs is not switched
    assert fsdp1._launch_warnings == [
        "the accelerate config asks for FSDP version 1, and this launch runs as MULTI_CPU over 2 process(es): "
        "parameters replicated, not sharded (use fsdp_version: 2, training/accelerate/fsdp2.yaml)"
    ]
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    deepspeed = trainer(DistributedType.NO)
    settle_launch(deepspeed)
    assert deepspeed._launch_warnings == [
        "the accelerate config asks for DeepSpeed, and this launch runs as NO: DeepSpeed needs GPUs"
    ]


def test_merging_a_sharded_model_is_refused_with_the_way_to_merge(monkeypatch):
    from accelerate.utils import DistributedType

    from vlfeedback_kit.training.distributed import settle_launch

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    accelerator = SimpleNamespace(distributed_type=DistributedType.FSDP, num_processes=8, is_main_process=True)
    trainer = SimpleNamespace(accelerator=accelerator, is_fsdp_enabled=True, args=SimpleNamespace(merge=True))
    with pytest.raises(ValueError, match=r"merge true under FSDP: .*\.merge_and_unload\(\)"):
        settle_launch(trainer)
    trainer.args.merge = False
    settle_launch(trainer)
    assert trainer._launch_warnings == []


def test_only_zero3_and_fsdp_skip_the_precomputed_reference_pass():
    """ZeRO-2 keeps whole parameters on every rank: the batched reference pass runs there."""
    from vlfeedback_kit.training.distributed import shards_parameters

    def trainer(fsdp, stage):
        plugin = None if stage is None else SimpleNamespace(zero_stage=stage)
        return SimpleNamespace(
            is_fsdp_enabled=fsdp, accelerator=SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin))
        )

    assert [shards_parameters(trainer(False, s)) for s in (None, 1, 2, 3)] == [False, False, False, True]
    assert shards_parameters(trainer(True, None))


def test_cache_merges_send_each_entry_once(tmp_path):
    from vlfeedback_kit.training.ref_cache import RefLogpCache

    cache = RefLogpCache(tmp_path / "c.parquet", {})
    cache.add(["a", "b"], [-1.0, -2.0], [-3.0, -4.0])
    assert cache.take_unshared() == {"a": (-1.0, -3.0), "b": (-2.0, -4.0)}
    cache.merge([{"c": (-5.0, -6.0)}])  # another rank's entries are not sent on again
    cache.add(["d"], [-7.0], [-8.0])
    assert cache.take_unshared() == {"d": (-7.0, -8.0)} and cache.take_unshared() == {}
    assert cache.sent == 3 and set(cache.values) == {"a", "b", "c", "d"}


def check_launch(root: Path, capsys, config: Path, *overrides: str) -> tuple[int, str, str]:
    from vlfeedback_kit.training.commands import check_here

    argv = [str(config), str(RECIPES / "tiny.yaml"), "--dataset_name", str(root / "vlfeedback"),
            "--model_name_or_path", str(root / "runs" / "tiny-qwen2-vl"),
            "--output_dir", str(root / "runs" / "unused"), *overrides]  # fmt: skip
    code = check_here(argv)
    captured = capsys.readouterr()
    return code, captured.out.strip(), captured.err.strip()


def deepspeed_config(tmp_path: Path, **changes: object) -> Path:
    import yaml

    config = yaml.safe_load((ACCELERATE / "zero3.yaml").read_text())
    config["mixed_precision"] = "no"  # the tiny recipe's fp32
    config["deepspeed_config"] |= changes
    path = tmp_path / "ds.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_deepspeed_configs_are_checked_before_the_launch(workspace, capsys, tmp_path):  # noqa: F811
    """Options that do not fit the recipe are refused with the reason; then DeepSpeed's absence (or no GPU)."""
    code, _, err = check_launch(workspace, capsys, ACCELERATE / "zero2.yaml")
    assert code == 2 and err == (
        "zero2.yaml: mixed_precision bf16 and the recipe's no differ (DeepSpeed takes its precision from the "
        "accelerate config); set mixed_precision: no in zero2.yaml, or --bf16 / --fp16 in the recipe"
    )
    code, _, err = check_launch(workspace, capsys, deepspeed_config(tmp_path), "--load_in_4bit", "true")
    assert code == 2 and "bitsandbytes 4/8-bit weights cannot be partitioned" in err
    code, _, err = check_launch(workspace, capsys, deepspeed_config(tmp_path, zero3_save_16bit_model=False))
    assert code == 2 and "set it to true" in err and "partitioned checkpoint" in err
    code, _, err = check_launch(
        workspace, capsys, deepspeed_config(tmp_path, zero_stage=2, offload_param_device="cpu")
    )
    assert code == 2 and "only ZeRO-3 does" in err
    code, _, err = check_launch(workspace, capsys, deepspeed_config(tmp_path))  # fits the recipe
    assert code == 2 and err in (
        "ds.yaml runs DeepSpeed, which is not installed: pip install deepspeed (on a machine with NVIDIA GPUs and "
        "CUDA), or launch with fsdp2 / multi_gpu",
        "ds.yaml runs DeepSpeed, which needs GPUs; on the CPU launch with fsdp2 or multi_gpu",
    )


def test_the_launcher_says_what_an_fsdp_config_becomes_on_the_cpu(workspace, capsys):  # noqa: F811
    done = run([*CLI, "train", "--recipe", "tiny", "--accelerate", "fsdp2", "--print-command"], workspace)
    assert "note: fsdp2.yaml on the CPU: accelerate would run FSDP as DDP; the kit shards the model" in done.stdout
    assert check_launch(workspace, capsys, ACCELERATE / "cpu.yaml") == (0, "", "")
