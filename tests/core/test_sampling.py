"""Schedules and samplers: the authors' respacing and posterior (official fixtures), and convergence of
every sampler on data whose exact answer is known (i.i.d. Gaussian latents, exact noise predictor)."""

import json
import math

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler
from safetensors.torch import load_file

from tests.helpers import OFFICIAL_FIXTURES as FIXTURES
from letstalk_core.sampling import (
    SAMPLERS,
    even_timesteps,
    make_sampler,
    respaced_betas,
    respaced_timesteps,
    stride_timesteps,
    training_alphas_cumprod,
)


# fixture respacing -> (sampler, steps, timestep_spacing) that reproduces it
RESPACINGS = {"250": (250, "even"), "25": (25, "even"), "ddim50": (50, "stride")}

# float32 tolerances against the authors' float64-coefficient / float32-arithmetic numbers
MEAN_TOL = dict(rtol=1e-5, atol=1e-5)
LOG_VARIANCE_TOL = dict(rtol=1e-5, atol=1e-5)
PRED_X0_TOL = dict(rtol=2e-5, atol=2e-5)  # pred x0 reaches |300| at t=999 (1/sqrt(acp) = 157)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """These tensors are tiny; on a shared CPU, intra-op threads only add synchronisation cost."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fixture_timesteps(respacing):
    index = json.loads((FIXTURES / "index.json").read_text())
    return index["diffusion"]["schedules"][respacing]["timesteps"]


def load_fixture(respacing):
    tensors = load_file(str(FIXTURES / f"diffusion_{respacing}.safetensors"))
    steps = sorted({int(k[len("step"):].split("_")[0]) for k in tensors if k.startswith("step")})
    return tensors, steps


def index_tensor(plan, respaced_index):
    """The scheduler's own timestep object for a respaced index, and its original timestep."""
    for index, timestep in plan:
        if int(index) == respaced_index:
            return index, timestep
    raise AssertionError(f"respaced index {respaced_index} not in the plan")


# ---------------------------------------------------------------------------------------------------
# respacing


@pytest.mark.parametrize("respacing", list(RESPACINGS))
def test_respaced_timesteps_match_the_authors(respacing):
    steps, spacing = RESPACINGS[respacing]
    expected = fixture_timesteps(respacing)
    sampler_name = "ddim" if respacing.startswith("ddim") else "ddpm"
    assert respaced_timesteps(steps, spacing, sampler_name) == expected
    for name in SAMPLERS:
        assert list(make_sampler(name, steps, spacing).timesteps) == expected


def test_even_respacing_is_evenly_spread_and_closed_form_close():
    for steps in (1, 2, 3, 10, 21, 100, 249, 250, 999, 1000):
        timesteps = even_timesteps(steps)
        assert len(timesteps) == steps
        assert timesteps[0] == 0 and (steps == 1 or timesteps[-1] == 999)
        closed_form = np.round(np.arange(steps) * 999 / max(steps - 1, 1)).astype(int)
        # the authors accumulate a float position; it may differ from the closed form by 1 at a .5 tie
        assert np.abs(np.asarray(timesteps) - closed_form).max() <= 1
    assert even_timesteps(1000) == list(range(1000))
    # 21 steps: 10 x 49.95 accumulated lands just below 499.5 -> 499 (the closed form rounds 499.5 -> 500)
    assert even_timesteps(21)[10] == 499


def test_stride_respacing_and_auto_choice():
    assert stride_timesteps(50) == list(range(0, 1000, 20))
    assert stride_timesteps(30) == list(range(0, 1000, 34))  # smallest stride with exactly 30 steps
    assert stride_timesteps(37) is None  # strides 27 and 28 give 38 and 36 steps
    assert stride_timesteps(1) is None  # no stride < 1000 gives a single step
    # 'auto': the authors' ddimN for ddim when it exists, else even; even for the other samplers
    assert respaced_timesteps(50, "auto", "ddim") == list(range(0, 1000, 20))
    assert respaced_timesteps(1, "auto", "ddim") == [0]
    assert respaced_timesteps(37, "auto", "ddim") == even_timesteps(37)
    assert respaced_timesteps(50, "auto", "ddpm") == even_timesteps(50)
    assert respaced_timesteps(50, "auto", "euler") == even_timesteps(50)


def test_respaced_betas_preserve_cumulative_alphas():
    acp = training_alphas_cumprod()
    for timesteps in (even_timesteps(25), stride_timesteps(50), [0, 1, 2, 999]):
        betas = respaced_betas(timesteps)
        np.testing.assert_allclose(np.cumprod(1 - betas), acp[timesteps], rtol=1e-12)
        assert betas[0] == pytest.approx(1 - acp[0], rel=1e-12)
    # the full respacing is the training schedule itself
    np.testing.assert_allclose(respaced_betas(list(range(1000))), np.linspace(1e-4, 0.02, 1000), rtol=1e-9)


def test_respacing_errors_name_the_input():
    for bad in (0, -3, 1001, 2.5, True, "25", None):
        with pytest.raises(ValueError, match="steps"):
            make_sampler("ddpm", bad)
    with pytest.raises(ValueError, match=r"sampler 'plms' is not known; accepted: ddpm, ddim, dpmpp_2m, euler"):
        make_sampler("plms", 10)
    with pytest.raises(ValueError, match="timestep_spacing 'linear' is not known; accepted: auto, even, stride"):
        make_sampler("ddim", 10, "linear")
    with pytest.raises(ValueError, match=r"cannot give exactly 37 steps.*nearest counts that can: 36 and 38"):
        make_sampler("ddim", 37, "stride")
    with pytest.raises(ValueError, match="strictly increasing"):
        respaced_betas([5, 5, 10])
    with pytest.raises(ValueError, match="0..999"):
        respaced_betas([0, 1000])


# ---------------------------------------------------------------------------------------------------
# the authors' posterior, predicted x0 and DDIM sample


@pytest.mark.parametrize("respacing", list(RESPACINGS))
def test_ddpm_posterior_matches_fixture(respacing):
    tensors, fixture_steps = load_fixture(respacing)
    steps, spacing = RESPACINGS[respacing]
    sampler = make_sampler("ddpm", steps, spacing)
    plan = sampler.begin()
    x_t = tensors["x_t"]  # [B, F, C, H, W]
    model_output = tensors["model_output"]  # [B, F, 2C, H, W]
    channels = x_t.shape[2]
    assert fixture_steps[0] == 0 and fixture_steps[-1] == steps - 1
    for step in fixture_steps:
        index, timestep = index_tensor(plan, step)
        assert timestep == fixture_timesteps(respacing)[step]

        # predicted x0, from diffusers' own step output (channels-first layout)
        result = sampler.scheduler.step(
            model_output.transpose(1, 2), index, x_t.transpose(1, 2), generator=torch.Generator().manual_seed(7)
        )
        torch.testing.assert_close(
            result.pred_original_sample.transpose(1, 2), tensors[f"step{step}_pred_xstart"], **PRED_X0_TOL
        )

        # learned-range log-variance (index 0: the authors' clipped posterior variance)
        log_variance = sampler.scheduler.log_variance(index, model_output[:, :, channels:].transpose(1, 2))
        torch.testing.assert_close(
            log_variance.transpose(1, 2), tensors[f"step{step}_log_variance"], **LOG_VARIANCE_TOL
        )

        # a full step through the sampler: mean + exp(log_variance / 2) * noise, no noise at index 0
        sample = sampler.step(model_output, index, x_t, generator=torch.Generator().manual_seed(11))
        if step == 0:
            expected = tensors["step0_mean"]
        else:
            noise = torch.randn(x_t.transpose(1, 2).shape, generator=torch.Generator().manual_seed(11))
            expected = tensors[f"step{step}_mean"] + torch.exp(0.5 * tensors[f"step{step}_log_variance"]) * noise.transpose(1, 2)
        torch.testing.assert_close(sample, expected, **MEAN_TOL)


def authors_posterior_float64(timesteps, index, x_t, model_output):
    """The authors' formulas for one respaced index, all in float64 (LETSTALK.md, Diffusion):
    returns (posterior mean, learned-range log-variance, predicted x0)."""
    betas = respaced_betas(timesteps)
    acp = np.cumprod(1 - betas)
    acp_prev = np.append(1.0, acp[:-1])
    posterior_variance = betas * (1 - acp_prev) / (1 - acp)
    clipped_log = np.log(np.append(posterior_variance[1], posterior_variance[1:]))
    channels = x_t.shape[2]
    x_t, eps, values = x_t.double(), model_output[:, :, :channels].double(), model_output[:, :, channels:].double()
    pred_x0 = np.sqrt(1 / acp[index]) * x_t - np.sqrt(1 / acp[index] - 1) * eps
    mean = (betas[index] * np.sqrt(acp_prev[index]) / (1 - acp[index])) * pred_x0 + (
        (1 - acp_prev[index]) * np.sqrt(1 - betas[index]) / (1 - acp[index])) * x_t
    fraction = (values + 1) / 2
    log_variance = fraction * np.log(betas[index]) + (1 - fraction) * clipped_log[index]
    return mean, log_variance, pred_x0


@pytest.mark.parametrize("respacing", ["250", "25"])
def test_ddpm_posterior_matches_the_authors_formulas_at_every_index(respacing):
    """The fixtures pin three indices; a float64 transcription of the authors' formulas checks the rest
    (the early indices are where a float32 schedule would lose digits)."""
    tensors, _ = load_fixture(respacing)
    steps, spacing = RESPACINGS[respacing]
    sampler = make_sampler("ddpm", steps, spacing)
    x_t, model_output = tensors["x_t"], tensors["model_output"]
    for index, _ in sampler.begin():
        i = int(index)
        mean, log_variance, pred_x0 = authors_posterior_float64(list(sampler.timesteps), i, x_t, model_output)
        result = sampler.scheduler.step(model_output.transpose(1, 2), index, x_t.transpose(1, 2),
                                        generator=torch.Generator().manual_seed(i))
        ours_log_variance = sampler.scheduler.log_variance(index, model_output[:, :, 4:].transpose(1, 2)).transpose(1, 2)
        torch.testing.assert_close(ours_log_variance, log_variance.float(), **LOG_VARIANCE_TOL)
        torch.testing.assert_close(result.pred_original_sample.transpose(1, 2), pred_x0.float(), **PRED_X0_TOL)
        noise = torch.randn(x_t.transpose(1, 2).shape, generator=torch.Generator().manual_seed(i)).transpose(1, 2)
        spread = torch.exp(0.5 * log_variance) if i > 0 else torch.zeros_like(log_variance)
        torch.testing.assert_close(result.prev_sample.transpose(1, 2), (mean + spread * noise).float(), **MEAN_TOL)


def test_index_zero_log_variance_is_clipped_not_the_diffusers_clamp():
    tensors, _ = load_fixture("25")
    sampler = make_sampler("ddpm", 25)
    plan = sampler.begin()
    index, _ = index_tensor(plan, 0)
    values = tensors["model_output"][:, :, 4:].transpose(1, 2)
    ours = sampler.scheduler.log_variance(index, values)
    stock = super(type(sampler.scheduler), sampler.scheduler)._get_variance(index, values, "learned_range")
    assert ours.min() > -12  # log of the posterior variance of index 1 and log(beta_0) ~ -9.2
    assert stock.min() < -40  # diffusers alone: log(1e-20) at the -1 end
    torch.testing.assert_close(ours.transpose(1, 2), tensors["step0_log_variance"], **LOG_VARIANCE_TOL)


@pytest.mark.parametrize("respacing", list(RESPACINGS))
def test_ddim_eta0_matches_fixture(respacing):
    tensors, fixture_steps = load_fixture(respacing)
    steps, spacing = RESPACINGS[respacing]
    sampler = make_sampler("ddim", steps, spacing)
    plan = sampler.begin()
    for step in fixture_steps:
        index, _ = index_tensor(plan, step)
        sample = sampler.step(tensors["model_output"], index, tensors["x_t"])
        torch.testing.assert_close(sample, tensors[f"step{step}_ddim_eta0"], **MEAN_TOL)


# ---------------------------------------------------------------------------------------------------
# convergence on Gaussian data with the exact noise predictor

DATA_MEAN, DATA_STD = 0.7, 0.4


def exact_noise(latents, timestep):
    """E[noise | x_t] when every latent element is N(DATA_MEAN, DATA_STD^2), at an original timestep."""
    a = float(training_alphas_cumprod()[timestep])
    return math.sqrt(1 - a) * (latents - math.sqrt(a) * DATA_MEAN) / (a * DATA_STD**2 + 1 - a)


def run_sampler(name, steps, start_noise, *, spacing="auto", variance_value=0.0, generator=None):
    """Samples from ``start_noise`` (unit Gaussian, [B, F, C, H, W]); returns (x0, first timestep)."""
    sampler = make_sampler(name, steps, spacing)
    plan = sampler.begin()
    latents = start_noise * sampler.init_noise_sigma
    for index, timestep in plan:
        noise = exact_noise(sampler.scale_model_input(latents, index), timestep)
        output = torch.cat([noise, torch.full_like(noise, variance_value)], dim=2)  # [B, F, 2C, H, W]
        latents = sampler.step(output, index, latents, generator=generator)
    return latents, plan[0][1]


def exact_ode_answer(start_noise, first_timestep):
    """The probability-flow ODE keeps the standardised value of a Gaussian fixed: the exact x0."""
    a = float(training_alphas_cumprod()[first_timestep])
    z = (start_noise - math.sqrt(a) * DATA_MEAN) / math.sqrt(a * DATA_STD**2 + 1 - a)
    return DATA_MEAN + DATA_STD * z


@pytest.fixture(scope="module")
def ode_errors():
    start = torch.randn(1, 2, 4, 8, 8, generator=torch.Generator().manual_seed(0))  # [B, F, C, H, W]
    errors = {}
    for name in ("ddim", "dpmpp_2m", "euler"):
        for steps in (25, 50, 100, 250):
            x0, first = run_sampler(name, steps, start, spacing="even")
            errors[name, steps] = (x0 - exact_ode_answer(start, first)).abs().max().item()
    return errors


@pytest.mark.parametrize("name", ["ddim", "dpmpp_2m", "euler"])
def test_ode_samplers_converge_to_the_exact_answer(ode_errors, name):
    errors = [ode_errors[name, steps] for steps in (25, 50, 100, 250)]
    assert all(later < earlier for earlier, later in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.03, errors


def test_second_order_solver_beats_first_order():
    start = torch.randn(1, 2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    errors = {}
    for name in ("ddim", "dpmpp_2m"):
        x0, first = run_sampler(name, 250, start, spacing="even")
        errors[name] = (x0 - exact_ode_answer(start, first)).abs().max().item()
    assert errors["dpmpp_2m"] < 0.01
    assert errors["dpmpp_2m"] < errors["ddim"] / 3, errors


def test_euler_equals_ddim_for_epsilon_models():
    start = torch.randn(1, 2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    for steps in (7, 40):
        euler, _ = run_sampler("euler", steps, start, spacing="even")
        ddim, _ = run_sampler("ddim", steps, start, spacing="even")
        torch.testing.assert_close(euler, ddim, rtol=1e-4, atol=1e-4)


def test_ddim_with_the_authors_stride_converges_from_its_first_timestep():
    start = torch.randn(1, 2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    x0, first = run_sampler("ddim", 200, start)  # auto -> range(0, 1000, 5)
    assert first == 995
    assert (x0 - exact_ode_answer(start, first)).abs().max().item() < 0.05


@pytest.mark.parametrize("steps", [10, 25])
def test_respaced_solvers_equal_stock_diffusers_on_the_1000_step_schedule(steps):
    """Building DPM-Solver++ and Euler on the respaced betas is the same as the stock schedulers on
    the training schedule with the respaced timesteps as custom timesteps."""
    start = torch.randn(1, 2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    timesteps = even_timesteps(steps)[::-1]
    stock_dpm = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero")
    stock_euler = EulerDiscreteScheduler(timestep_spacing="leading", final_sigmas_type="zero")
    for name, stock in (("dpmpp_2m", stock_dpm), ("euler", stock_euler)):
        stock.set_timesteps(timesteps=timesteps)
        latents = start * stock.init_noise_sigma
        for t in stock.timesteps:
            noise = exact_noise(stock.scale_model_input(latents, t), int(t))
            latents = stock.step(noise, t, latents).prev_sample
        ours, _ = run_sampler(name, steps, start, spacing="even")
        torch.testing.assert_close(ours, latents, rtol=1e-4, atol=1e-5)


def test_ddpm_samples_the_data_distribution_and_uses_the_learned_variance():
    start = torch.randn(1, 4, 4, 32, 32, generator=torch.Generator().manual_seed(1))  # 16384 values
    spreads = {}
    for variance_value in (-1.0, 0.0, 1.0):
        x0, _ = run_sampler("ddpm", 250, start, variance_value=variance_value, generator=torch.Generator().manual_seed(3))
        assert abs(x0.mean().item() - DATA_MEAN) < 0.015
        spreads[variance_value] = x0.std().item()
    assert abs(spreads[0.0] - DATA_STD) < 0.02, spreads
    # +1 = log(beta) (most noise), -1 = the posterior variance (least): more noise, wider samples
    assert spreads[1.0] > spreads[0.0] + 0.005 and spreads[0.0] > spreads[-1.0] + 0.005, spreads


def test_ddpm_needs_the_variance_channels():
    sampler = make_sampler("ddpm", 5)
    index, _ = sampler.begin()[0]
    latents = torch.zeros(1, 2, 4, 8, 8)
    with pytest.raises(ValueError, match="ddpm sampler needs the learned variance"):
        sampler.step(torch.zeros(1, 2, 4, 8, 8), index, latents)
    with pytest.raises(ValueError, match=r"model_output must be \[B, F, 2C, H, W\]"):
        sampler.step(torch.zeros(1, 2, 8, 4, 4), index, latents)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m", "euler"])
def test_noised_puts_clean_latents_at_the_level_of_each_step(sampler):
    """What the overlap of the clip loop relies on: ``noised`` gives the latents a sampler holds at an
    index (the scheduler's own add_noise for the VP samplers, x0 + sigma noise for Euler)."""
    schedule = make_sampler(sampler, 10)
    plan = schedule.begin()
    generator = torch.Generator().manual_seed(4)
    clean = torch.randn(1, 3, 4, 5, 5, generator=generator)
    noise = torch.randn(1, 3, 4, 5, 5, generator=generator)
    acp = training_alphas_cumprod()
    for position, (index, timestep) in enumerate(plan):
        noised = schedule.noised(clean, noise, index)
        if sampler == "euler":
            sigma = float(schedule.scheduler.sigmas[position])
            torch.testing.assert_close(noised, clean + sigma * noise, rtol=1e-4, atol=1e-4)
            # the model sees them divided by sqrt(sigma^2 + 1) (Euler's input scaling; called here without
            # stepping, diffusers' scale_model_input would keep the first step's index): sqrt(a) x0 +
            # sqrt(1 - a) noise, as with the other samplers
            seen = noised / (sigma**2 + 1) ** 0.5
        else:
            torch.testing.assert_close(noised, schedule.scheduler.add_noise(clean, noise, index.reshape(1)),
                                       rtol=1e-5, atol=1e-5)
            seen = noised
        expected = acp[timestep] ** 0.5 * clean + (1 - acp[timestep]) ** 0.5 * noise
        torch.testing.assert_close(seen, expected.float(), rtol=1e-4, atol=1e-4)
