"""ace_step_ui.v1.sampling: schedules against the parity fixture, samplers and guidance against formulas."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ace_step_ui.errors import InputError
from ace_step_ui.v1 import sampling
from v1_fixture import call_kwargs, cases, refs

SCHEDULE_RTOL, SCHEDULE_ATOL = 1e-6, 1e-7  # fixture tolerances.json: retrieve_timesteps.*


def expected_schedules(case: str) -> list[sampling.Schedule]:
    """The schedules upstream builds for a case's call, in the order it builds them."""
    call = call_kwargs(case, Path("/unused"))
    steps = call.get("infer_step", 60)
    scheduler = call.get("scheduler_type", "euler")
    if call.get("task") == "edit":
        return [sampling.flow_schedule(steps)]  # FlowEdit always uses the Euler schedule
    oss = call.get("oss_steps")
    if oss:
        oss_steps = [int(step) for step in oss.split(",")]
        built = [sampling.flow_schedule(max(oss_steps)),
                 sampling.flow_schedule(len(oss_steps), scheduler=scheduler,
                                        sigmas=sampling.oss_sigmas(oss_steps, torch.float32))]
        steps = max(oss_steps)
    else:
        built = [sampling.flow_schedule(steps, scheduler=scheduler)]
    if call.get("audio2audio_enable") and call.get("ref_audio_input"):
        sigma_max = 1 - call["ref_audio_strength"]
        built.append(sampling.flow_schedule(int(sigma_max * steps), sigma_max=sigma_max,
                                            scheduler=scheduler))
    return built


@pytest.mark.parametrize("case", sorted(cases()))
def test_schedules_match_the_fixture(case):
    recorded = refs(case)
    built = expected_schedules(case)
    assert len([k for k in recorded if k.startswith("retrieve_timesteps.timesteps.")]) == len(built)
    for index, schedule in enumerate(built):
        suffix = f".{index:03d}"
        torch.testing.assert_close(schedule.timesteps, recorded["retrieve_timesteps.timesteps" + suffix],
                                   rtol=SCHEDULE_RTOL, atol=SCHEDULE_ATOL)
        torch.testing.assert_close(schedule.sigmas, recorded["retrieve_timesteps.sigmas" + suffix],
                                   rtol=SCHEDULE_RTOL, atol=SCHEDULE_ATOL)
        steps = recorded["retrieve_timesteps.num_inference_steps" + suffix]
        assert schedule.num_inference_steps == int(steps)


def test_eight_step_schedule_is_shifted_twice():
    schedule = sampling.flow_schedule(8)
    reference = [1000, 947.54, 882.79, 800.84, 693.79, 548.05, 337.97, 8.93]
    assert schedule.timesteps.tolist() == pytest.approx(reference, abs=0.006)
    assert schedule.sigmas[-1] == 0 and len(schedule.sigmas) == 9
    top, bottom = sampling.shifted_sigma_range()
    assert top == 1.0 and bottom == pytest.approx(3 * 0.001 / (1 + 2 * 0.001), rel=1e-6)
    assert schedule.sigmas[-2].item() == pytest.approx(3 * bottom / (1 + 2 * bottom), rel=1e-6)


def test_audio2audio_schedule_starts_at_the_double_shifted_level():
    schedule = sampling.flow_schedule(4, sigma_max=0.5)
    assert schedule.sigma_max == pytest.approx(0.75)  # shift(0.5): the noise mixed into the reference
    assert schedule.timesteps[0].item() == pytest.approx(900.0)  # shift(0.75): what the model is told


def test_heun_schedule_layout():
    n = 5
    plain, heun = sampling.flow_schedule(n), sampling.heun_schedule(n)
    assert heun.num_inference_steps == n and len(heun.timesteps) == 2 * n - 1
    assert heun.timesteps.tolist() == [plain.timesteps[0].item()] + [
        t for t in plain.timesteps[1:].tolist() for _ in range(2)]
    assert heun.sigmas.tolist() == [plain.sigmas[0].item()] + [
        s for s in plain.sigmas[1:-1].tolist() for _ in range(2)] + [0.0]
    assert torch.equal(sampling.flow_schedule(n, scheduler="heun").timesteps, heun.timesteps)


def test_schedule_errors():
    with pytest.raises(InputError, match="heun"):
        sampling.flow_schedule(3, scheduler="heun", sigmas=[0.9, 0.5, 0.1])
    with pytest.raises(InputError, match="scheduler"):
        sampling.flow_schedule(3, scheduler="ddim")
    with pytest.raises(InputError, match="at least 1 step"):
        sampling.flow_schedule(0)
    with pytest.raises(InputError, match="1-based"):
        sampling.oss_sigmas([0, 4], torch.float32)


def test_oss_sigmas_pass_through_the_pipeline_dtype():
    full = sampling.flow_schedule(16)
    assert sampling.oss_sigmas([2, 16], torch.float32) == (full.timesteps[[1, 15]] / 1000).tolist()
    bf16 = sampling.oss_sigmas([2, 16], torch.bfloat16)[0]
    assert bf16 == (full.timesteps[1].to(torch.bfloat16) / 1000).item() != full.sigmas[1].item()


def test_schedule_to_device_keeps_everything():
    schedule = sampling.flow_schedule(4, sigma_max=0.5).to("cpu")
    assert schedule.num_inference_steps == 4 and schedule.sigma_max == pytest.approx(0.75)


# samplers ---------------------------------------------------------------------------------------


def test_omega_factor():
    assert sampling.omega_factor(10) == pytest.approx(1.04621, abs=5e-6)
    assert sampling.omega_factor(0) == 1.0
    assert 0.9 < sampling.omega_factor(-50) < sampling.omega_factor(50) < 1.1
    assert sampling.omega_factor(-1e5) == 0.9 and sampling.omega_factor(1e5) == pytest.approx(1.1)


def random(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def test_euler_step_mean_shift_over_the_whole_batch():
    x, v = random(2, 8, 16, 5, seed=1), random(2, 8, 16, 5, seed=2) + 0.3
    sigma, sigma_next = 0.8, 0.6
    dx = (sigma_next - sigma) * v
    plain = sampling.euler_step(x, v, sigma, sigma_next, omega_scale=0.0)
    torch.testing.assert_close(plain, x + dx, rtol=0, atol=1e-6)
    shifted = sampling.euler_step(x, v, sigma, sigma_next, omega_scale=10.0)
    omega = sampling.omega_factor(10.0)
    torch.testing.assert_close(shifted, x + (dx - dx.mean()) * omega + dx.mean(), rtol=0, atol=1e-6)
    # the mean is taken over all items: changing item 1 moves item 0
    other = v.clone()
    other[1] += 1.0
    assert not torch.equal(sampling.euler_step(x, other, sigma, sigma_next, 10.0)[0], shifted[0])
    # omega 0 (factor 1): item 0 is unaffected up to the rounding of (dx - m) + m
    torch.testing.assert_close(sampling.euler_step(x, other, sigma, sigma_next, 0.0)[0], plain[0],
                               rtol=0, atol=1e-6)


def test_euler_step_returns_the_velocity_dtype():
    x, v = random(1, 8, 16, 4), random(1, 8, 16, 4, seed=3, dtype=torch.bfloat16)
    assert sampling.euler_step(x, v, 1.0, 0.5, 10.0).dtype == torch.bfloat16


def test_heun_steps_average_the_two_velocities():
    x = random(1, 8, 16, 6, seed=4)
    v1, v2 = random(1, 8, 16, 6, seed=5), random(1, 8, 16, 6, seed=6)
    sigma, sigma_next = 0.9, 0.4
    predicted, state = sampling.heun_first_order_step(x, v1, sigma, sigma_next, omega_scale=0.0)
    torch.testing.assert_close(predicted, x + (sigma_next - sigma) * v1, rtol=0, atol=1e-6)
    corrected = sampling.heun_correction_step(predicted, v2, sigma_next, state, omega_scale=0.0)
    torch.testing.assert_close(corrected, x + (sigma_next - sigma) * (v1 + v2) / 2, rtol=0, atol=1e-6)


def test_sample_heun_makes_two_n_minus_one_calls():
    schedule = sampling.heun_schedule(4)
    calls = []
    constant = random(1, 8, 16, 3, seed=7)

    def velocity(x, t, index):
        calls.append((index, t.item()))
        return constant

    x0 = random(1, 8, 16, 3, seed=8)
    done = []
    out = sampling.sample(velocity, x0, schedule, "heun", omega_scale=0.0,
                          on_step=lambda n, total: done.append((n, total)))
    assert calls == list(enumerate(schedule.timesteps.tolist()))
    assert done == [(n, 7) for n in range(1, 8)]
    # a constant field is integrated exactly: x0 + (0 - 1)·c
    torch.testing.assert_close(out, x0 - constant, rtol=0, atol=1e-5)


def test_sample_euler_matches_explicit_steps():
    schedule = sampling.flow_schedule(5)
    x = x0 = random(2, 8, 16, 3, seed=9)

    def velocity(x, t, index):
        return torch.tanh(x) * (t / 1000) + index

    out = sampling.sample(velocity, x0, schedule, "euler", omega_scale=10.0)
    for index, t in enumerate(schedule.timesteps):
        x = sampling.euler_step(x, velocity(x, t, index), schedule.sigmas[index],
                                schedule.sigmas[index + 1], 10.0)
    assert torch.equal(out, x)


def test_pingpong_step_formula_and_generator():
    x, v = random(2, 8, 16, 4, seed=10), random(2, 8, 16, 4, seed=11)
    sigma, sigma_next = 0.7, 0.3
    out = sampling.pingpong_step(x, v, sigma, sigma_next, torch.Generator().manual_seed(42))
    noise = torch.empty_like(x).normal_(generator=torch.Generator().manual_seed(42))
    torch.testing.assert_close(out, (1 - sigma_next) * (x - sigma * v) + sigma_next * noise,
                               rtol=0, atol=1e-6)
    again = sampling.pingpong_step(x, v, sigma, sigma_next, torch.Generator().manual_seed(42))
    other = sampling.pingpong_step(x, v, sigma, sigma_next, torch.Generator().manual_seed(43))
    assert torch.equal(out, again) and not torch.equal(out, other)


def test_sample_pingpong_is_reproducible_per_seed():
    schedule = sampling.flow_schedule(4)
    x0 = random(1, 8, 16, 4, seed=12)

    def run(seed):
        return sampling.sample(lambda x, t, i: 0.5 * x, x0, schedule, "pingpong", omega_scale=10.0,
                               generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))


def test_plain_euler_step_has_no_omega():
    x, v = random(1, 8, 16, 4, seed=13, dtype=torch.bfloat16), random(1, 8, 16, 4, seed=14)
    t, t_next = torch.tensor(800.0) / 1000, torch.tensor(500.0) / 1000
    out = sampling.plain_euler_step(x, v, t, t_next)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, (x.float() + (t_next - t) * v).to(torch.bfloat16))


# guidance ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps, interval, window", [
    (8, 0.5, (2, 6)), (8, 1.0, (0, 8)), (60, 0.5, (15, 45)), (5, 0.5, (1, 3)), (2, 0.5, (0, 1)),
    (8, 0.0, (4, 4))])
def test_guidance_window(steps, interval, window):
    assert sampling.guidance_window(steps, interval) == window


def test_guidance_scale_decay():
    start, end = sampling.guidance_window(8, 1.0)
    scales = [sampling.guidance_scale_at(i, start, end, 15.0, 3.0, 1.0) for i in range(start, end)]
    assert scales[0] == 15.0 and scales[-1] == pytest.approx(3.0)
    assert scales == pytest.approx([15 - 12 * i / 7 for i in range(8)])
    assert sampling.guidance_scale_at(5, start, end, 15.0, 3.0, 0.0) == 15.0
    assert sampling.guidance_scale_at(3, start, end, 15.0, 3.0, 0.5) == pytest.approx(15 - 12 * 3 / 7 / 2)
    # upstream divides by zero on a one-step window; the single step keeps the full scale
    assert sampling.guidance_scale_at(0, 0, 1, 15.0, 3.0, 1.0) == 15.0


def test_cfg():
    cond, uncond = random(1, 8, 16, 4, seed=15), random(1, 8, 16, 4, seed=16)
    torch.testing.assert_close(sampling.cfg(cond, uncond, 4.0), uncond + 4.0 * (cond - uncond))
    assert torch.equal(sampling.cfg(cond, uncond, 1.0), uncond + (cond - uncond))


def apg_reference(cond, uncond, scale, running):
    """APG written out per (batch, channel) in float64."""
    diff = (cond - uncond).double() + (-0.75 * running if running is not None else 0)
    out = torch.empty_like(cond, dtype=torch.float64)
    for b in range(cond.shape[0]):
        for c in range(cond.shape[1]):
            d = diff[b, c]
            d = d * min(1.0, 2.5 / d.norm().item())
            unit = cond[b, c].double() / cond[b, c].double().norm()
            out[b, c] = cond[b, c].double() + (scale - 1) * (d - (d * unit).sum() * unit)
    return out, diff


def test_apg_momentum_clip_and_projection():
    momentum = sampling.APGMomentum()
    running = None
    for step in range(3):
        cond = random(2, 3, 16, 5, seed=20 + step)
        uncond = random(2, 3, 16, 5, seed=30 + step) * (0.01 if step == 1 else 1.0)
        expected, running = apg_reference(cond, uncond, 7.0, running)
        guided = sampling.apg(cond, uncond, 7.0, momentum)
        torch.testing.assert_close(guided.double(), expected, rtol=0, atol=2e-5)
        torch.testing.assert_close(momentum.running_average.double(), running, rtol=0, atol=1e-5)
    # the update is orthogonal to cond per (batch, channel), and scale 1 returns cond
    cond, uncond = random(1, 2, 16, 5, seed=40), random(1, 2, 16, 5, seed=41)
    update = (sampling.apg(cond, uncond, 3.0) - cond).double()
    assert (update * cond.double()).sum(dim=(-1, -2)).abs().max() < 1e-4
    assert torch.equal(sampling.apg(cond, uncond, 1.0), cond)


def test_apg_clips_large_differences_to_the_threshold():
    cond = torch.zeros(1, 1, 16, 4)
    cond[..., 0, :] = 1.0
    uncond = cond.clone()
    uncond[..., 1, :] = -100.0  # difference orthogonal to cond, norm 200
    guided = sampling.apg(cond, uncond, 2.0)
    assert (guided - cond).norm().item() == pytest.approx(2.5, rel=1e-5)


def test_cfg_zero_star():
    cond, uncond = random(2, 8, 16, 4, seed=50), random(2, 8, 16, 4, seed=51)
    for step in (0, 1):
        assert torch.equal(sampling.cfg_zero_star(cond, uncond, 5.0, step), torch.zeros_like(cond))
    guided = sampling.cfg_zero_star(cond, uncond, 5.0, 2)
    for b in range(2):
        alpha = (cond[b] * uncond[b]).sum() / ((uncond[b] ** 2).sum() + 1e-8)
        torch.testing.assert_close(guided[b], alpha * uncond[b] + 5.0 * (cond[b] - alpha * uncond[b]))
    torch.testing.assert_close(sampling.cfg_zero_star(cond, cond, 5.0, 2), cond)
    assert torch.equal(sampling.cfg_zero_star(cond, uncond, 5.0, 0, zero_init=False),
                       sampling.cfg_zero_star(cond, uncond, 5.0, 5))


def test_double_condition():
    cond, text_only, uncond = (random(1, 8, 16, 4, seed=s) for s in (60, 61, 62))
    guided = sampling.double_condition(cond, text_only, uncond, 5.0, 1.5)
    torch.testing.assert_close(guided, -4.0 * uncond + 3.5 * text_only + 1.5 * cond)
    # equal scales: plain CFG on the full condition
    torch.testing.assert_close(sampling.double_condition(cond, text_only, uncond, 3.0, 3.0),
                               sampling.cfg(cond, uncond, 3.0))


def test_omega_zero_factor_is_exactly_one_in_float32():
    assert torch.tensor(sampling.omega_factor(0.0), dtype=torch.float32).item() == 1.0
    assert math.isclose(sampling.omega_factor(10.0), 0.9 + 0.2 / (1 + math.exp(-1.0)), rel_tol=1e-12)


def test_sample_repaint_moves_only_the_masked_frames_and_keeps_the_rest_on_the_path():
    schedule = sampling.flow_schedule(5)
    x0, z0 = random(1, 8, 16, 6, seed=20), random(1, 8, 16, 6, seed=21)
    mask = torch.zeros_like(x0)
    mask[..., 2:4] = 1.0
    velocity = lambda x, t, index: torch.tanh(x) + index
    done = []
    out = sampling.sample_repaint(velocity, x0, z0, mask, schedule, first_step=2,
                                  on_step=lambda n, total: done.append((n, total)))
    assert done == [(3, 5), (4, 5), (5, 5)]  # steps before first_step are skipped
    timesteps = schedule.timesteps
    sigma = timesteps[2] / 1000
    x = (1 - sigma) * x0 + sigma * z0
    for index in range(2, 5):
        sigma = timesteps[index] / 1000
        sigma_next = timesteps[index + 1] / 1000 if index < 4 else torch.tensor(0.0)
        x = x + (sigma_next - sigma) * velocity(x, timesteps[index], index)
        x = torch.where(mask == 1.0, x, (1 - sigma_next) * x0 + sigma_next * z0)
    torch.testing.assert_close(out, x, rtol=0, atol=1e-5)
    assert torch.equal(out[..., :2], x0[..., :2]) and torch.equal(out[..., 4:], x0[..., 4:])
    # nothing left to run: the source comes back
    assert torch.equal(sampling.sample_repaint(velocity, x0, z0, mask, schedule, first_step=5), x0)


def test_sample_flow_edit_follows_the_velocity_difference_then_the_target():
    schedule = sampling.flow_schedule(4)
    x_src = random(1, 8, 16, 3, seed=22)
    noises = iter([random(1, 8, 16, 3, seed=30 + i) for i in range(10)])
    drawn = []

    def noise_fn():
        drawn.append(next(noises))
        return drawn[-1]

    source_v = lambda x, t: 0.5 * x
    target_v = lambda x, t, after_edit: 0.5 * x + 1.0
    out = sampling.sample_flow_edit(source_v, target_v, x_src, schedule, first_step=1,
                                    last_edit_step=3, n_avg=1, noise_fn=noise_fn, pingpong=False,
                                    generator=None)
    # the edit window steps by v_target(z_edit + z_src - x_src) - v_source(z_src) = 0.5·(z_edit - x_src) + 1
    t = schedule.timesteps / 1000
    z_edit = x_src
    for index in (1, 2):
        z_edit = z_edit + (t[index + 1] - t[index]) * (0.5 * (z_edit - x_src) + 1.0)
    x_t = schedule.sigmas[3] * drawn[-1] + (1 - schedule.sigmas[3]) * x_src
    x = z_edit + x_t - x_src
    x = x + (0 - t[3]) * (0.5 * x + 1.0)
    assert len(drawn) == 3  # one forward noise per edit step, one to re-noise after it
    torch.testing.assert_close(out, x, rtol=0, atol=1e-5)
