"""Schedules, samplers and guidance rules of ACE-Step v1, as pure functions over tensors.

Everything here reproduces upstream ACE-Step (commit d612523f) to the bit in float32: its three
flow-matching schedulers (euler with the "granularity" mean shift, heun, pingpong), the schedules
`retrieve_timesteps` returns for them (including the shift applied twice, the `oss_steps` path and the
audio2audio scheduler), and the guidance rules (CFG, APG, CFG-zero*, double condition, guidance
interval and decay). The order of floating-point operations follows upstream where it changes
results; that is why some expressions below are not written in their simplest form.

A sampler step is `step(x, velocity, sigma, sigma_next, ...) -> x_next`; each sampler
(`sample_euler`, `sample_heun`, `sample_pingpong`, `sample_repaint`, `sample_flow_edit`) runs its
loop k-diffusion style over a `Schedule` with a caller-supplied velocity function that does the
guidance, and reports every model call to an `on_step(done, total)` callback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy
import torch
from torch import Tensor

from ..errors import InputError

SHIFT = 3.0
NUM_TRAIN_TIMESTEPS = 1000
SCHEDULERS = ("euler", "heun", "pingpong")

# APG constants of upstream's `apg_forward` / `MomentumBuffer` defaults.
APG_MOMENTUM = -0.75
APG_NORM_THRESHOLD = 2.5


# Schedules -----------------------------------------------------------------------------------------


@dataclass
class Schedule:
    """What upstream's `retrieve_timesteps` hands the loop, plus its scheduler's `sigma_max`.

    `timesteps` are the model's timestep inputs (1000·σ), `sigmas` the step's noise levels with a
    trailing 0 (heun: the interleaved layout, see `heun_schedule`), `num_inference_steps` the step
    count upstream derives the guidance window from (heun: the requested N, not the 2N-1 calls).
    `sigma_max` is the shifted top training sigma (upstream `scheduler.sigma_max`), the noise level
    audio2audio mixes the reference with.
    """

    timesteps: Tensor
    sigmas: Tensor
    num_inference_steps: int
    sigma_max: float = 1.0

    def to(self, device: torch.device | str) -> Schedule:
        return Schedule(self.timesteps.to(device), self.sigmas.to(device), self.num_inference_steps,
                        self.sigma_max)


def shift_sigmas(sigmas: Tensor, shift: float = SHIFT) -> Tensor:
    """The flow-matching time shift σ' = s·σ / (1 + (s-1)·σ) (in the input's dtype)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def shifted_sigma_range(sigma_max: float = 1.0, shift: float = SHIFT) -> tuple[float, float]:
    """(highest, lowest) shifted training sigma: upstream `scheduler.sigma_max` / `.sigma_min`.

    Upstream's scheduler builds 1000 training timesteps `linspace(1, 1000·sigma_max)` in float32 and
    shifts them; `set_timesteps` starts from these two ends.
    """
    ends = torch.tensor([sigma_max * NUM_TRAIN_TIMESTEPS, 1.0], dtype=torch.float32) / NUM_TRAIN_TIMESTEPS
    top, bottom = shift_sigmas(ends, shift).tolist()
    return top, bottom


def base_sigmas(num_steps: int, sigma_max: float = 1.0, shift: float = SHIFT) -> tuple[Tensor, float]:
    """The N noise levels of upstream `set_timesteps(N)` (float32) and the scheduler's sigma_max.

    The linspace runs between the already shifted training ends and is shifted again (float64, as
    upstream's NumPy code does), so the lowest level is shift(shift(0.001)) = 0.0089286.
    """
    if num_steps < 1:
        raise InputError(f"a schedule needs at least 1 step, not {num_steps}")
    top, bottom = shifted_sigma_range(sigma_max, shift)
    # NumPy's linspace, not torch's: the two differ in the last float64 bits.
    levels = numpy.linspace(top * NUM_TRAIN_TIMESTEPS, bottom * NUM_TRAIN_TIMESTEPS, num_steps)
    levels = levels / NUM_TRAIN_TIMESTEPS
    levels = shift * levels / (1 + (shift - 1) * levels)
    return torch.from_numpy(levels).to(torch.float32), top


def flow_schedule(num_steps: int, *, sigma_max: float = 1.0, shift: float = SHIFT,
                  sigmas: Sequence[float] | None = None, scheduler: str = "euler") -> Schedule:
    """Upstream `retrieve_timesteps` for `FlowMatch*Scheduler(num_train_timesteps=1000, shift=3)`.

    `sigmas` given (the oss_steps path, see `oss_sigmas`): those levels, shifted once more in
    float32, and N = len(sigmas). `sigma_max` < 1 is the audio2audio scheduler (sigma_max =
    1 - ref_audio_strength; upstream runs `int(sigma_max · infer_step)` steps). Euler and pingpong
    share this schedule; `scheduler="heun"` returns `heun_schedule` (which has no `sigmas` path).
    """
    check_scheduler(scheduler)
    if scheduler == "heun":
        if sigmas is not None:
            raise InputError("oss_steps work with the euler and pingpong schedulers, not heun")
        return heun_schedule(num_steps, sigma_max=sigma_max, shift=shift)
    if sigmas is not None:
        levels = shift_sigmas(torch.tensor(list(sigmas), dtype=torch.float32), shift)
        top = shifted_sigma_range(sigma_max, shift)[0]
    else:
        levels, top = base_sigmas(num_steps, sigma_max, shift)
    return Schedule(timesteps=levels * NUM_TRAIN_TIMESTEPS,
                    sigmas=torch.cat([levels, torch.zeros(1)]),
                    num_inference_steps=len(levels), sigma_max=top)


def heun_schedule(num_steps: int, *, sigma_max: float = 1.0, shift: float = SHIFT) -> Schedule:
    """Upstream's Heun layout: timesteps [t0, t1, t1, ..., t_{N-1}, t_{N-1}] (2N-1 model calls),
    sigmas [σ0, σ1, σ1, ..., σ_{N-1}, σ_{N-1}, 0]; `num_inference_steps` stays N."""
    levels, top = base_sigmas(num_steps, sigma_max, shift)
    timesteps = levels * NUM_TRAIN_TIMESTEPS
    timesteps = torch.cat([timesteps[:1], timesteps[1:].repeat_interleave(2)])
    padded = torch.cat([levels, torch.zeros(1)])
    sigmas = torch.cat([padded[:1], padded[1:-1].repeat_interleave(2), padded[-1:]])
    return Schedule(timesteps=timesteps, sigmas=sigmas, num_inference_steps=num_steps, sigma_max=top)


def oss_sigmas(oss_steps: Sequence[int], dtype: torch.dtype = torch.float32) -> list[float]:
    """Upstream's oss_steps -> sigmas: the 1-based steps of a max(oss_steps)-step Euler schedule.

    The picked timesteps pass through the pipeline dtype (stored, then divided by 1000 in it), as
    upstream does; `flow_schedule(sigmas=...)` then shifts them again.
    """
    if not oss_steps or min(oss_steps) < 1:
        raise InputError(f"oss_steps are 1-based step numbers (at least 1), not {list(oss_steps)}")
    full = flow_schedule(max(oss_steps))
    picked = full.timesteps[[step - 1 for step in oss_steps]].to(dtype)
    return (picked / NUM_TRAIN_TIMESTEPS).float().tolist()


def check_scheduler(scheduler: str) -> None:
    if scheduler not in SCHEDULERS:
        raise InputError(f"scheduler must be one of {', '.join(SCHEDULERS)}, not '{scheduler}'")


# Sampler steps ---------------------------------------------------------------------------------------


def omega_factor(omega_scale: float) -> float:
    """The "granularity" factor: a logistic map of omega_scale onto (0.9, 1.1); 0 -> 1, 10 -> 1.04621."""
    lower, upper, steepness = 0.9, 1.1, 0.1
    exponent = -steepness * omega_scale
    # math.exp overflows past ~709 where upstream's np.exp gives inf, i.e. the lower bound.
    denominator = 1 + math.exp(exponent) if exponent < 700 else math.inf
    return lower + (upper - lower) / denominator


def as_sigma(sigma: Tensor | float) -> Tensor:
    """A noise level as upstream holds it: a 0-d float32 tensor (the arithmetic dtype depends on it)."""
    return torch.as_tensor(sigma, dtype=torch.float32)


def mean_shifted(dx: Tensor, omega: float) -> Tensor:
    """Scale an update about its mean over the *whole* tensor (so batch items are coupled)."""
    mean = dx.mean()
    return (dx - mean) * omega + mean


def euler_step(x: Tensor, velocity: Tensor, sigma: Tensor | float, sigma_next: Tensor | float,
               omega_scale: float) -> Tensor:
    """x + mean_shift((σ_next - σ)·v): upstream `FlowMatchEulerDiscreteScheduler.step`.

    The update is added to x in float32 and the result cast to the velocity's dtype.
    """
    sigma, sigma_next = as_sigma(sigma).to(velocity.device), as_sigma(sigma_next).to(velocity.device)
    dx = (sigma_next - sigma) * velocity
    return (x.to(torch.float32) + mean_shifted(dx, omega_factor(omega_scale))).to(velocity.dtype)


def plain_euler_step(x: Tensor, velocity: Tensor, sigma: Tensor | float,
                     sigma_next: Tensor | float) -> Tensor:
    """x + (σ_next - σ)·v in float32, cast back to x's dtype: no omega (repaint, extend, FlowEdit).

    Upstream passes timestep/1000 as the σ here, which differ from the schedule's sigmas in the last bit.
    """
    sigma, sigma_next = as_sigma(sigma).to(x.device), as_sigma(sigma_next).to(x.device)
    return (x.to(torch.float32) + (sigma_next - sigma) * velocity).to(x.dtype)


@dataclass(frozen=True)
class HeunState:
    """What a Heun first-order call leaves for its correction call."""

    sample: Tensor  # x at the start of the step (float32)
    derivative: Tensor  # v₁ as upstream recomputes it from the denoised estimate
    dt: Tensor  # σ_next - σ


def heun_first_order_step(x: Tensor, velocity: Tensor, sigma: Tensor | float,
                          sigma_next: Tensor | float, omega_scale: float) -> tuple[Tensor, HeunState]:
    """The predictor: x̂ = x + mean_shift(v·(σ_next - σ)); returns x̂ and the state to correct it."""
    sigma, sigma_next = as_sigma(sigma).to(x.device), as_sigma(sigma_next).to(x.device)
    sample = x.to(torch.float32)
    # Upstream goes through the denoised estimate (x - σ·v) and back; s_churn = 0 keeps σ_hat = σ.
    denoised = sample - velocity * sigma
    derivative = (sample - denoised) / sigma
    dt = sigma_next - sigma
    x_next = (sample + mean_shifted(derivative * dt, omega_factor(omega_scale))).to(velocity.dtype)
    return x_next, HeunState(sample=sample, derivative=derivative, dt=dt)


def heun_correction_step(x_predicted: Tensor, velocity: Tensor, sigma_next: Tensor | float,
                         state: HeunState, omega_scale: float) -> Tensor:
    """The corrector: from the saved x, step with ½(v₁ + v₂), v₂ evaluated at x̂ and σ_next."""
    sigma_next = as_sigma(sigma_next).to(x_predicted.device)
    predicted = x_predicted.to(torch.float32)
    denoised = predicted - velocity * sigma_next
    derivative = 0.5 * (state.derivative + (predicted - denoised) / sigma_next)
    dx = mean_shifted(derivative * state.dt, omega_factor(omega_scale))
    return (state.sample + dx).to(velocity.dtype)


def pingpong_step(x: Tensor, velocity: Tensor, sigma: Tensor | float, sigma_next: Tensor | float,
                  generator: torch.Generator | None) -> Tensor:
    """Denoise fully, then re-noise to σ_next with fresh noise: (1-σ_next)·(x - σ·v) + σ_next·ε.

    ε is drawn in float32 for the whole batch from the one generator (upstream uses the first item's).
    Omega is ignored, as upstream does.
    """
    sigma, sigma_next = as_sigma(sigma).to(x.device), as_sigma(sigma_next).to(x.device)
    sample = x.to(torch.float32)
    denoised = sample - sigma * velocity
    noise = torch.empty_like(sample).normal_(generator=generator)
    return ((1 - sigma_next) * denoised + sigma_next * noise).to(velocity.dtype)


VelocityFn = Callable[[Tensor, Tensor, int], Tensor]
StepCallback = Callable[[int, int], None]
NoiseFn = Callable[[], Tensor]


def _report(on_step: StepCallback | None, done: int, total: int) -> None:
    if on_step is not None:
        on_step(done, total)


def sample_euler(velocity_fn: VelocityFn, x: Tensor, schedule: Schedule, *, omega_scale: float,
                 on_step: StepCallback | None = None) -> Tensor:
    """Upstream's euler loop. `velocity_fn(x, timestep, loop_index)` returns the guided velocity
    for the 0-d `timestep`; `on_step(done, total)` is called after every model call."""
    timesteps, sigmas = schedule.timesteps, schedule.sigmas
    for index in range(len(timesteps)):
        velocity = velocity_fn(x, timesteps[index], index)
        x = euler_step(x, velocity, sigmas[index], sigmas[index + 1], omega_scale)
        _report(on_step, index + 1, len(timesteps))
    return x


def sample_heun(velocity_fn: VelocityFn, x: Tensor, schedule: Schedule, *, omega_scale: float,
                on_step: StepCallback | None = None) -> Tensor:
    """Upstream's heun loop over `heun_schedule`: a predictor call, then a corrector call at the
    repeated timestep (2N-1 model calls; the loop index is what guidance compares with)."""
    timesteps, sigmas = schedule.timesteps, schedule.sigmas
    state: HeunState | None = None
    for index in range(len(timesteps)):
        velocity = velocity_fn(x, timesteps[index], index)
        if state is None:
            x, state = heun_first_order_step(x, velocity, sigmas[index], sigmas[index + 1], omega_scale)
        else:
            x, state = heun_correction_step(x, velocity, sigmas[index], state, omega_scale), None
        _report(on_step, index + 1, len(timesteps))
    return x


def sample_pingpong(velocity_fn: VelocityFn, x: Tensor, schedule: Schedule, *,
                    generator: torch.Generator | None, on_step: StepCallback | None = None) -> Tensor:
    """Upstream's pingpong (SDE) loop: every step denoises and re-noises from `generator`."""
    timesteps, sigmas = schedule.timesteps, schedule.sigmas
    for index in range(len(timesteps)):
        velocity = velocity_fn(x, timesteps[index], index)
        x = pingpong_step(x, velocity, sigmas[index], sigmas[index + 1], generator)
        _report(on_step, index + 1, len(timesteps))
    return x


def sample(velocity_fn: VelocityFn, x: Tensor, schedule: Schedule, scheduler: str, *,
           omega_scale: float, generator: torch.Generator | None = None,
           on_step: StepCallback | None = None) -> Tensor:
    """The sampler `scheduler` names (pingpong ignores omega, euler and heun draw no noise)."""
    check_scheduler(scheduler)
    if scheduler == "pingpong":
        return sample_pingpong(velocity_fn, x, schedule, generator=generator, on_step=on_step)
    chosen = sample_euler if scheduler == "euler" else sample_heun
    return chosen(velocity_fn, x, schedule, omega_scale=omega_scale, on_step=on_step)


def sample_repaint(velocity_fn: VelocityFn, x0: Tensor, z0: Tensor, mask: Tensor, schedule: Schedule,
                   *, first_step: int, on_step: StepCallback | None = None) -> Tensor:
    """Upstream's repaint / extend loop: plain Euler where `mask` is 1, elsewhere the straight path
    (1-σ)·x0 + σ·z0 from the source latents `x0` to the noise `z0`.

    Steps before `first_step` are skipped (variance < 1 keeps the start of the path); with none
    left the source comes back unchanged. σ is timestep/1000, as upstream computes it here.
    """
    timesteps = schedule.timesteps
    total = len(timesteps)
    x = None
    for index in range(first_step, total):
        t = timesteps[index]
        sigma = t / NUM_TRAIN_TIMESTEPS
        sigma_next = timesteps[index + 1] / NUM_TRAIN_TIMESTEPS if index + 1 < total else torch.zeros_like(sigma)
        if x is None:
            # Upstream writes the start as edit + noised - x0 with edit = x0; the rounding is kept.
            x = x0 + ((1 - sigma) * x0 + sigma * z0) - x0
        x = plain_euler_step(x, velocity_fn(x, t, index), sigma, sigma_next)
        x = torch.where(mask == 1.0, x, (1 - sigma_next) * x0 + sigma_next * z0)
        _report(on_step, index + 1, total)
    return x0.clone() if x is None else x


def sample_flow_edit(source_velocity: Callable[[Tensor, Tensor], Tensor],
                     target_velocity: Callable[[Tensor, Tensor, bool], Tensor], x_src: Tensor,
                     schedule: Schedule, *, first_step: int, last_edit_step: int, n_avg: int,
                     noise_fn: NoiseFn, pingpong: bool, generator: torch.Generator | None,
                     on_step: StepCallback | None = None) -> Tensor:
    """Upstream's FlowEdit loop (`flowedit_diffusion_process`) from the source latents `x_src`.

    Steps [first_step, last_edit_step) move z_edit by the averaged difference of the target and
    source velocities at matched noisy points (`n_avg` forward noises from `noise_fn`); the steps
    after continue from z_edit re-noised to that level and follow the target alone.
    `target_velocity(x, t, momentum)` uses the target's APG momentum only outside the edit window,
    as upstream does. Arithmetic dtypes follow upstream's, casts included.
    """
    timesteps = schedule.timesteps
    total = len(timesteps)
    dtype = x_src.dtype
    z_edit = x_src.clone()
    x_target = None
    for index in range(first_step, total):
        t = timesteps[index]
        t_now = t / NUM_TRAIN_TIMESTEPS
        t_next = timesteps[index + 1] / NUM_TRAIN_TIMESTEPS if index + 1 < total else torch.zeros_like(t_now)
        if index < last_edit_step:
            delta = torch.zeros_like(x_src)
            for _ in range(n_avg):
                z_src = (1 - t_now) * x_src + t_now * noise_fn()
                z_target = z_edit + z_src - x_src
                v_src = source_velocity(z_src, t)
                delta += (1 / n_avg) * (target_velocity(z_target, t, False) - v_src)
            if pingpong:
                # Upstream's pingpong edit only draws its noise here and never moves z_edit (which it
                # has cast to float32); kept, because that is what the released app does.
                z_edit = z_edit.to(torch.float32)
                torch.empty_like(z_edit).normal_(generator=generator)
            else:
                z_edit = plain_euler_step(z_edit, delta, t_now, t_next).to(dtype)
        else:
            if x_target is None:
                x_t = schedule.sigmas[index] * noise_fn() + (1.0 - schedule.sigmas[index]) * x_src
                x_target = z_edit + x_t - x_src
            velocity = target_velocity(x_target, t, True)
            x_target = x_target.to(torch.float32)
            if pingpong:
                noise = torch.empty_like(z_edit).normal_(generator=generator)
                x_target = (1 - t_next) * (x_target - t_now * velocity) + t_next * noise
            else:
                x_target = (x_target + (t_next - t_now) * velocity).to(dtype)
        _report(on_step, index + 1, total)
    return z_edit if x_target is None else x_target


# Guidance --------------------------------------------------------------------------------------------


def guidance_window(num_steps: int, interval: float) -> tuple[int, int]:
    """Loop indices [start, end) that get guidance: the middle `interval` fraction of N steps."""
    start = int(num_steps * ((1 - interval) / 2))
    end = int(num_steps * (interval / 2 + 0.5))
    return start, end


def guidance_scale_at(step: int, start: int, end: int, scale: float, min_scale: float,
                      decay: float) -> float:
    """The guidance scale at loop index `step` inside [start, end), decaying linearly to min_scale.

    Deviation: upstream divides by (end - start - 1) and raises ZeroDivisionError when the window has
    a single step (e.g. 2 steps, interval 0.5); that step gets the full `scale` here.
    """
    if decay <= 0:
        return scale
    span = end - start - 1
    progress = (step - start) / span if span > 0 else 0.0
    return scale - (scale - min_scale) * progress * decay


def cfg(cond: Tensor, uncond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance: u + g·(c - u)."""
    return uncond + scale * (cond - uncond)


@dataclass
class APGMomentum:
    """APG's running average of c - u: r ← d + momentum·r, starting from d (one per sampling run)."""

    momentum: float = APG_MOMENTUM
    running_average: Tensor | None = None

    def update(self, difference: Tensor) -> Tensor:
        if self.running_average is None:
            self.running_average = difference
        else:
            self.running_average = difference + self.momentum * self.running_average
        return self.running_average


def apg(cond: Tensor, uncond: Tensor, scale: float, momentum: APGMomentum | None = None, *,
        eta: float = 0.0, norm_threshold: float = APG_NORM_THRESHOLD,
        dims: tuple[int, ...] = (-1, -2)) -> Tensor:
    """Adaptive projected guidance: c + (g-1)·(d⊥ + η·d∥), d = c - u (momentum-averaged, norm-clipped).

    `momentum` is updated in place (upstream updates it only on guided steps). The clip is per
    (batch, channel) over `dims`; the projection onto c runs in float64.
    """
    difference = cond - uncond
    if momentum is not None:
        difference = momentum.update(difference)
    if norm_threshold > 0:
        norm = difference.norm(p=2, dim=dims, keepdim=True)
        difference = difference * torch.minimum(torch.ones_like(difference), norm_threshold / norm)
    parallel, orthogonal = project(difference, cond, dims)
    return cond + (scale - 1) * (orthogonal + eta * parallel)


def project(vector: Tensor, onto: Tensor, dims: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """(parallel, orthogonal) parts of `vector` relative to `onto` over `dims`, computed in float64."""
    vector64, direction = vector.double(), torch.nn.functional.normalize(onto.double(), dim=dims)
    parallel = (vector64 * direction).sum(dim=dims, keepdim=True) * direction
    orthogonal = vector64 - parallel
    return parallel.to(vector.dtype), orthogonal.to(vector.dtype)


def cfg_zero_star(cond: Tensor, uncond: Tensor, scale: float, step: int, *, zero_steps: int = 1,
                  zero_init: bool = True) -> Tensor:
    """CFG-zero*: α·u + g·(c - α·u) with α = <c,u>/‖u‖² per batch item; zero velocity while
    `step <= zero_steps` (upstream's loop index, so only when the guidance window starts at 0 or 1)."""
    batch = cond.shape[0]
    cond_flat, uncond_flat = cond.reshape(batch, -1), uncond.reshape(batch, -1)
    dot = torch.sum(cond_flat * uncond_flat, dim=1, keepdim=True)
    alpha = dot / (torch.sum(uncond_flat ** 2, dim=1, keepdim=True) + 1e-8)
    alpha = alpha.view(batch, *([1] * (cond.dim() - 1)))
    if zero_init and step <= zero_steps:
        return cond * 0.0
    return uncond * alpha + scale * (cond - uncond * alpha)


def double_condition(cond: Tensor, cond_text_only: Tensor, uncond: Tensor, text_scale: float,
                     lyric_scale: float) -> Tensor:
    """Separate text and lyric guidance: (1-g_t)·u + (g_t-g_l)·c_text + g_l·c."""
    return ((1 - text_scale) * uncond + (text_scale - lyric_scale) * cond_text_only
            + lyric_scale * cond)
