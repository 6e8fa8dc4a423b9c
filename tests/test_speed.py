"""The speed options: memory modes, lending parts to the device, compiled blocks, bfloat16 hints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ace_step_ui import speed, tasks
from ace_step_ui.engines import EngineManager
from ace_step_ui.errors import InputError
from ace_step_ui.memory import GIB
from ace_step_ui.v1 import pipeline as v1_pipeline
from ace_step_ui.v1.transformer import ACEStepTransformer, TransformerConfig

CUDA = torch.device("cuda")


def test_auto_memory_is_resident_where_the_weights_fit_beside_the_reserve():
    assert speed.memory_mode("auto", CUDA, need_bytes=6 * GIB, free=80 * GIB) == "resident"
    assert speed.memory_mode("auto", CUDA, need_bytes=7 * GIB, free=8 * GIB) == "offload"
    assert speed.memory_mode("auto", torch.device("cpu"), need_bytes=7 * GIB, free=GIB) == "resident"
    assert speed.memory_mode("offload", CUDA, need_bytes=GIB, free=80 * GIB) == "offload"
    assert speed.memory_mode("resident", CUDA, need_bytes=7 * GIB, free=GIB) == "resident"


def test_auto_memory_streams_the_dit_where_not_even_it_fits():
    def mode(free_gib: int) -> str:
        return speed.memory_mode("auto", CUDA, need_bytes=9 * GIB, free=free_gib * GIB, dit_bytes=5 * GIB)

    assert [mode(20), mode(8), mode(6)] == ["resident", "offload", "sequential"]
    assert speed.memory_mode("sequential", CUDA, need_bytes=GIB, free=80 * GIB) == "sequential"


def test_an_unknown_memory_mode_is_refused():
    with pytest.raises(InputError, match="auto, resident, offload, sequential"):
        speed.Speed(memory="sometimes")


class Recording(nn.Linear):
    """A layer that records where it is sent instead of moving (the CPU has no second device)."""

    def __init__(self, trail: list[str]):
        super().__init__(2, 2)
        self.trail = trail

    def to(self, device):  # noqa: D102 - records only
        self.trail.append(str(device))
        return self


def test_lent_parts_go_to_the_device_and_back_and_resident_ones_stay():
    trail: list[str] = []
    away, home = Recording(trail), Recording([])
    with speed.lent([away], torch.device("meta")):
        trail.append("stage")
    assert trail == ["meta", "stage", "cpu"]
    with speed.lent([home], torch.device("cpu")):
        pass
    assert home.trail == []


def test_streamed_weights_are_on_the_device_for_the_block_and_point_home_after():
    layer = nn.BatchNorm1d(3)  # parameters and buffers
    homes = {name: (tensor.data_ptr(), tensor.clone()) for name, tensor in layer.state_dict().items()}
    with speed.streamed(layer, torch.device("meta")):
        assert {tensor.device.type for tensor in layer.state_dict().values()} == {"meta"}
    for name, tensor in layer.state_dict().items():
        assert tensor.device.type == "cpu" and tensor.data_ptr() == homes[name][0]
        assert torch.equal(tensor, homes[name][1])
    with speed.streamed(layer, torch.device("cpu")):  # already there: untouched
        assert all(tensor.data_ptr() == homes[name][0] for name, tensor in layer.state_dict().items())


def test_sequential_mode_streams_the_dit_one_block_at_a_time(tiny_v1_weights):
    """The blocks stay in CPU memory; each one's weights are on the device (here the meta device:
    shapes only) exactly while it runs, for the song's keys and values and for every step; at the
    steps, with the keys and values made, all but the cross-attention's to_k and to_v, which the
    block does not run then."""
    from test_v1_transformer import decode_inputs, read_config

    config: TransformerConfig = read_config(tiny_v1_weights)
    model = ACEStepTransformer(config).eval()
    blocks = model.transformer_blocks
    homes = [parameter.data_ptr() for parameter in blocks.parameters()]
    model.stream_blocks(torch.device("meta"))
    assert all(parameter.device.type == "meta" for name, parameter in model.named_parameters()
               if not name.startswith("transformer_blocks."))
    ran: list[tuple[int, int]] = []  # (block, how many blocks had weights on the device)

    def on_device(block: nn.Module) -> bool:
        return any(parameter.device.type == "meta" for parameter in block.parameters())

    def placement(block: nn.Module) -> str:
        """"all" weights on the device, all "but to_k/to_v" of the cross-attention, or "other"."""
        devices = {name: parameter.device.type for name, parameter in block.named_parameters()}
        if set(devices.values()) == {"meta"}:
            return "all"
        unused = {name for name in devices if name.startswith(("cross_attn.to_k.", "cross_attn.to_v."))}
        home = {name for name, device in devices.items() if device == "cpu"}
        return "but to_k/to_v" if home == unused and "meta" in devices.values() else "other"

    for index, block in enumerate(blocks):
        block.register_forward_pre_hook(
            lambda module, _, index=index: ran.append((index, sum(map(on_device, blocks)),
                                                       placement(module))))
    latents, frames, context, context_mask = decode_inputs(config, 2, seed=0)
    timestep = torch.tensor([900.0, 900.0], device="meta")
    with torch.no_grad():
        condition = model.condition(context.to("meta"))
        assert not any(map(on_device, blocks))
        assert all(key.device.type == "meta" for key, _ in condition.keys_values)
        # The masks stay on the CPU: all-real masks are read there and never reach an op.
        velocity = model.decode(latents.to("meta"), frames, condition, context_mask, timestep)
        assert ran == [(index, 1, "but to_k/to_v") for index in range(len(blocks))]
        ran.clear()
        # Given the condition's sequence instead, each block makes its keys and values itself.
        model.decode(latents.to("meta"), frames, context.to("meta"), context_mask, timestep)
        assert ran == [(index, 1, "all") for index in range(len(blocks))]
    assert velocity.shape == latents.shape and velocity.device.type == "meta"
    assert [parameter.data_ptr() for parameter in blocks.parameters()] == homes
    assert all(parameter.device.type == "cpu" for parameter in blocks.parameters())


def test_sequential_mode_makes_the_resident_song(tiny_v1):
    """On the CPU (the blocks' home and the device at once) nothing moves: the same samples as
    resident, through the engine's whole path, compile skipped."""
    request = {"tags": "lofi", "duration": 2.0, "number_of_steps": 2, "seed": 1}
    songs = {}
    for mode in ("resident", "sequential"):
        manager = EngineManager(device="cpu", dtype="float32", speed=speed.Speed(memory=mode))
        pipeline = manager.get(str(tiny_v1)).pipeline
        assert (pipeline.transformer.block_device is not None) == (mode == "sequential")
        assert pipeline.offload == (mode == "sequential")
        songs[mode] = tasks.run("generate", dict(request), manager, str(tiny_v1))
    assert torch.equal(songs["sequential"].audio.samples, songs["resident"].audio.samples)


def test_offload_lends_the_text_encoder_then_the_autoencoder_for_their_stages(tiny_v1, monkeypatch):
    """The v1 pipeline in offload mode: each part is lent to the device only for its stage."""
    stages: list[tuple[str, ...]] = []
    manager = EngineManager(device="cpu", dtype="float32", speed=speed.Speed(memory="offload"))
    pipeline = manager.get(str(tiny_v1)).pipeline
    assert pipeline.offload and all(parameter.device.type == "cpu"
                                    for parameter in pipeline.text_encoder.model.parameters())
    lend = speed.lent

    def recording_lent(modules, device):
        stages.append(tuple(type(module).__name__ for module in modules))
        assert device == pipeline.device
        return lend(modules, device)

    monkeypatch.setattr(v1_pipeline, "lent", recording_lent)
    tasks.run("generate", {"tags": "lofi", "duration": 2.0, "number_of_steps": 2, "seed": 1},
              manager, str(tiny_v1))
    assert stages == [("UMT5EncoderModel",), ("AutoencoderDC", "HiFiGANVocoder"),
                      ("AutoencoderDC", "HiFiGANVocoder")]


def test_compiled_blocks_give_the_same_velocity(tiny_v1_weights):
    """`--compile` traces the blocks (here through dynamo's eager backend, which needs no C
    compiler and checks the graph capture; the GPU runs inductor)."""
    from test_v1_transformer import decode_inputs, read_config

    config: TransformerConfig = read_config(tiny_v1_weights)
    torch.manual_seed(0)
    model = ACEStepTransformer(config).eval()
    latents, frames, context, context_mask = decode_inputs(config, 2, seed=0)
    timestep = torch.tensor([900.0, 900.0])
    erg = torch.tensor([False, True])
    with torch.no_grad():
        plain = model.decode(latents, frames, model.condition(context), context_mask, timestep,
                             erg_diffusion=erg)
        speed.compile_blocks(model.transformer_blocks, backend="eager")
        compiled = model.decode(latents, frames, model.condition(context), context_mask, timestep,
                                erg_diffusion=erg)
    torch._dynamo.reset()
    assert torch.allclose(compiled, plain, atol=1e-6)


def test_the_bfloat16_hint_is_for_float32_runs_on_cpus_with_bfloat16_units(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(speed, "_cpu_flags", lambda: {"avx2", "amx_bf16"})
    assert "--dtype bfloat16" in speed.bfloat16_hint(cpu, torch.float32)
    assert speed.bfloat16_hint(cpu, torch.bfloat16) == ""
    assert speed.bfloat16_hint(CUDA, torch.float32) == ""
    monkeypatch.setattr(speed, "_cpu_flags", lambda: {"avx2", "fma"})
    assert speed.bfloat16_hint(cpu, torch.float32) == ""


def test_cpu_threads_follow_the_cgroup_quota_and_omp_num_threads(tmp_path, monkeypatch):
    cpu_max = tmp_path / "cpu.max"
    monkeypatch.setattr(speed.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    cpu_max.write_text("200000 100000\n")  # a 2-CPU container on a 64-core host
    assert speed.usable_cores(cpu_max) == 2
    cpu_max.write_text("150000 100000\n")
    assert speed.usable_cores(cpu_max) == 2
    cpu_max.write_text("max 100000\n")
    assert speed.usable_cores(cpu_max) == 64
    assert speed.usable_cores(tmp_path / "missing") == 64

    before = torch.get_num_threads()
    try:
        cpu_max.write_text("100000 100000\n")
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert speed.set_cpu_threads(cpu_max) == 1
        torch.set_num_threads(before)
        monkeypatch.setenv("OMP_NUM_THREADS", str(before))
        assert speed.set_cpu_threads(cpu_max) == before
    finally:
        torch.set_num_threads(before)
