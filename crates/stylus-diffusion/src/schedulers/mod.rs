//! Noise schedulers, computed on the host in f64 and checked against diffusers' schedulers
//! (fixture test: `tests/scheduler_parity.rs`, script `tools/make_scheduler_fixtures.py`).
//!
//! A scheduler works on flat `f32` slices (the whole latent batch): the sampler moves the latents
//! to the host once per step, which costs little next to a UNet call, and keeps this arithmetic
//! backend-free and exactly comparable with the reference.
//!
//! The training schedule mirrors diffusers' float32 tables where diffusers keeps float32 (betas,
//! `alphas_cumprod`, the sigma table, final sigmas), so both sides start from the same numbers;
//! everything computed from them is f64.

mod ddim;
mod dpm_solver;
mod euler;
mod pndm;

pub use ddim::DdimScheduler;
pub use dpm_solver::DpmSolverMultistepScheduler;
pub use euler::EulerScheduler;
pub use pndm::PndmScheduler;

use stylus_core::{Result, StylusError};

/// Where the inference timesteps fall in the training range (diffusers' `timestep_spacing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestepSpacing {
    /// Evenly spaced over `[0, T-1]`, including both ends.
    Linspace,
    /// Multiples of `T / steps` from 0, plus `steps_offset`.
    Leading,
    /// Evenly spaced down from `T - 1`.
    Trailing,
}

/// How the betas grow over the training timesteps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BetaSchedule {
    /// Betas linear in t.
    Linear,
    /// Square roots of the betas linear in t (Stable Diffusion).
    ScaledLinear,
}

/// The training noise schedule and timestep options shared by every scheduler (diffusers'
/// `scheduler_config.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    /// `None`: each scheduler's diffusers default (DDIM and PNDM `leading`, the others `linspace`),
    /// which is what a pipeline loaded from SD 1.5's config (no `timestep_spacing` key) uses.
    pub timestep_spacing: Option<TimestepSpacing>,
    pub steps_offset: usize,
}

impl ScheduleConfig {
    /// Stable Diffusion 1.5's `scheduler_config.json`: scaled-linear betas 0.00085..0.012 over
    /// 1000 steps, `steps_offset` 1, `set_alpha_to_one` false.
    pub fn sd15() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            timestep_spacing: None,
            steps_offset: 1,
        }
    }

    fn spacing_or(&self, default: TimestepSpacing) -> TimestepSpacing {
        self.timestep_spacing.unwrap_or(default)
    }
}

/// The schedule tables of one training configuration.
#[derive(Debug, Clone)]
struct TrainSchedule {
    /// Cumulative products of `1 - beta`, as float32 values (diffusers' table).
    alphas_cumprod: Vec<f64>,
    /// `sqrt((1 - a) / a)` per training timestep, as float32 values (diffusers' table).
    sigmas: Vec<f64>,
    num_train_timesteps: usize,
}

impl TrainSchedule {
    fn new(config: &ScheduleConfig) -> Result<Self> {
        let n = config.num_train_timesteps;
        if n < 2 {
            return Err(StylusError::InvalidArgument(format!(
                "num_train_timesteps must be at least 2, got {n}"
            )));
        }
        let (start, end) = match config.beta_schedule {
            BetaSchedule::Linear => (config.beta_start, config.beta_end),
            BetaSchedule::ScaledLinear => (config.beta_start.sqrt(), config.beta_end.sqrt()),
        };
        let mut alphas_cumprod = Vec::with_capacity(n);
        let mut sigmas = Vec::with_capacity(n);
        // torch's cumprod accumulates float32 inputs in double and rounds each output.
        let mut product = 1.0f64;
        for i in 0..n {
            let x = linspace_at(start, end, n, i);
            let beta = match config.beta_schedule {
                BetaSchedule::Linear => x,
                BetaSchedule::ScaledLinear => x * x,
            } as f32;
            product *= f64::from(1.0f32 - beta);
            let alpha_cumprod = product as f32;
            alphas_cumprod.push(f64::from(alpha_cumprod));
            // IEEE division and sqrt are correctly rounded: this equals torch's float32 table.
            sigmas.push(f64::from(((1.0f32 - alpha_cumprod) / alpha_cumprod).sqrt()));
        }
        Ok(Self {
            alphas_cumprod,
            sigmas,
            num_train_timesteps: n,
        })
    }

    /// Sigma at a fractional training timestep, linear between table entries (`np.interp`).
    fn interpolate_sigma(&self, t: f64) -> f64 {
        let last = self.sigmas.len() - 1;
        if t <= 0.0 {
            return self.sigmas[0];
        }
        if t >= last as f64 {
            return self.sigmas[last];
        }
        let j = t.floor() as usize;
        if t == j as f64 {
            return self.sigmas[j];
        }
        let slope = self.sigmas[j + 1] - self.sigmas[j];
        slope * (t - j as f64) + self.sigmas[j]
    }

    /// The fractional training timestep of a sigma, interpolating in log-sigma (diffusers'
    /// `_sigma_to_t`).
    fn sigma_to_t(&self, sigma: f64) -> f64 {
        let log_sigmas: Vec<f64> = self
            .sigmas
            .iter()
            .map(|s| f64::from(s.ln() as f32))
            .collect();
        let log_sigma = sigma.max(1e-10).ln();
        let count = log_sigmas.iter().filter(|&&l| log_sigma - l >= 0.0).count();
        let low = count.saturating_sub(1).min(log_sigmas.len() - 2);
        let (lo, hi) = (log_sigmas[low], log_sigmas[low + 1]);
        let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
        (1.0 - w) * low as f64 + w * (low + 1) as f64
    }

    /// `sqrt(a) * original + sqrt(1 - a) * noise` with `a = alphas_cumprod[t]` (diffusers'
    /// `DDIMScheduler.add_noise` / `PNDMScheduler.add_noise`).
    fn add_noise_at(&self, t: i64, original: &[f32], noise: &[f32]) -> Result<Vec<f32>> {
        check_lengths(original, original, Some(noise))?;
        let alpha = self.alphas_cumprod[t.clamp(0, self.num_train_timesteps as i64 - 1) as usize];
        let (a, b) = (alpha.sqrt(), (1.0 - alpha).sqrt());
        Ok(original
            .iter()
            .zip(noise)
            .map(|(&x, &z)| (a * f64::from(x) + b * f64::from(z)) as f32)
            .collect())
    }

    /// Integer inference timesteps (DDIM, PNDM, DPM-Solver), as diffusers computes them.
    fn integer_timesteps(&self, spacing: TimestepSpacing, steps: usize, offset: usize) -> Vec<i64> {
        let n = self.num_train_timesteps;
        match spacing {
            TimestepSpacing::Linspace => (0..steps)
                .rev()
                .map(|i| linspace_at(0.0, (n - 1) as f64, steps, i).round_ties_even() as i64)
                .collect(),
            TimestepSpacing::Leading => {
                let ratio = n / steps;
                (0..steps)
                    .rev()
                    .map(|i| (i * ratio + offset) as i64)
                    .collect()
            }
            TimestepSpacing::Trailing => trailing(n, steps),
        }
    }
}

/// `np.arange(n, 0, -n / steps).round() - 1`.
fn trailing(n: usize, steps: usize) -> Vec<i64> {
    let ratio = n as f64 / steps as f64;
    let count = (n as f64 / ratio).ceil() as usize;
    (0..count)
        .map(|i| (n as f64 - i as f64 * ratio).round_ties_even() as i64 - 1)
        .collect()
}

/// Element `i` of `np.linspace(start, end, count)` (numpy's formula, bit for bit).
fn linspace_at(start: f64, end: f64, count: usize, i: usize) -> f64 {
    if count == 1 {
        return start;
    }
    if i == count - 1 {
        return end;
    }
    let step = (end - start) / (count - 1) as f64;
    i as f64 * step + start
}

fn check_steps(steps: usize, config: &ScheduleConfig) -> Result<()> {
    if steps == 0 || steps > config.num_train_timesteps {
        return Err(StylusError::InvalidArgument(format!(
            "steps must be in 1..={}, got {steps}",
            config.num_train_timesteps
        )));
    }
    Ok(())
}

fn check_lengths(model_output: &[f32], sample: &[f32], noise: Option<&[f32]>) -> Result<()> {
    let noise_len = noise.map_or(sample.len(), <[f32]>::len);
    if model_output.len() != sample.len() || noise_len != sample.len() {
        return Err(StylusError::InvalidArgument(format!(
            "scheduler step: model output ({}), sample ({}) and noise ({noise_len}) differ in length",
            model_output.len(),
            sample.len()
        )));
    }
    Ok(())
}

/// One sampling method over a fixed number of steps. Call [`Scheduler::step`] once per entry of
/// [`Scheduler::timesteps`], in order.
pub trait Scheduler: Send + std::fmt::Debug {
    /// The timesteps the UNet is called with, one per model evaluation.
    fn timesteps(&self) -> &[f64];

    /// The factor applied to N(0, 1) initial latents.
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    /// The factor applied to the latents before the UNet call of step `index`.
    fn model_input_scale(&self, _index: usize) -> f64 {
        1.0
    }

    /// The `steps + 1` k-diffusion sigmas (the last one 0) of sigma-based schedulers.
    fn sigmas(&self) -> Option<&[f64]> {
        None
    }

    /// Whether [`Scheduler::step`] needs fresh N(0, 1) noise (ancestral samplers).
    fn needs_noise(&self) -> bool {
        false
    }

    /// `original` (clean latents) noised to the level of timestep `index` with N(0, 1) `noise`
    /// (diffusers' `add_noise` at `timesteps[index]`, the begin index for img2img). `index` may be
    /// at most `timesteps().len() - 1`.
    fn add_noise(&self, index: usize, original: &[f32], noise: &[f32]) -> Result<Vec<f32>>;

    /// The latents after step `index`, from the noise prediction at that step. `noise` is
    /// required when [`Scheduler::needs_noise`].
    fn step(
        &mut self,
        index: usize,
        model_output: &[f32],
        sample: &[f32],
        noise: Option<&[f32]>,
    ) -> Result<Vec<f32>>;
}

/// `original + sigma * noise` (the k-diffusion form of `add_noise`, Euler's).
fn add_sigma_noise(sigma: f64, original: &[f32], noise: &[f32]) -> Result<Vec<f32>> {
    check_lengths(original, original, Some(noise))?;
    Ok(original
        .iter()
        .zip(noise)
        .map(|(&x, &z)| (f64::from(x) + sigma * f64::from(z)) as f32)
        .collect())
}

/// The first step index of img2img at `strength` over `steps` steps: diffusers'
/// `get_timesteps` (`steps - min(floor(steps * strength), steps)`; all our schedulers have order
/// 1). The strength is read as the decimal the user wrote (0.7, not the f32 0.69999999), as
/// diffusers receives a Python float.
pub fn img2img_start(steps: usize, strength: f32) -> usize {
    let strength: f64 = strength.to_string().parse().unwrap_or(f64::from(strength));
    let init = ((steps as f64 * strength).floor().max(0.0) as usize).min(steps);
    steps - init
}

fn index_error(index: usize, len: usize) -> StylusError {
    StylusError::InvalidArgument(format!(
        "add_noise: timestep index {index} out of range (the schedule has {len} timesteps)"
    ))
}

/// The sampler names accepted by [`scheduler_by_name`] (A1111 names in parentheses):
/// `ddim`, `euler`, `euler_ancestral` (Euler a), `dpmpp_2m` (DPM++ 2M),
/// `dpmpp_2m_karras` (DPM++ 2M Karras), `pndm` (PLMS).
pub const SCHEDULER_NAMES: [&str; 6] = stylus_core::SAMPLER_NAMES;

/// Builds the named scheduler for `steps` steps.
pub fn scheduler_by_name(
    name: &str,
    config: &ScheduleConfig,
    steps: usize,
) -> Result<Box<dyn Scheduler>> {
    Ok(match name {
        "ddim" => Box::new(DdimScheduler::new(config, steps)?),
        "euler" => Box::new(EulerScheduler::new(config, steps)?),
        "euler_ancestral" => Box::new(EulerScheduler::ancestral(config, steps)?),
        "dpmpp_2m" => Box::new(DpmSolverMultistepScheduler::new(config, steps, false)?),
        "dpmpp_2m_karras" => Box::new(DpmSolverMultistepScheduler::new(config, steps, true)?),
        "pndm" => Box::new(PndmScheduler::new(config, steps)?),
        other => {
            return Err(StylusError::InvalidArgument(format!(
                "unknown sampler `{other}`; expected one of {}",
                SCHEDULER_NAMES.join(", ")
            )));
        }
    })
}

/// The A1111 display name of a sampler (`Sampler:` in PNG parameters).
pub fn a1111_sampler_name(name: &str) -> &str {
    match name {
        "ddim" => "DDIM",
        "euler" => "Euler",
        "euler_ancestral" => "Euler a",
        "dpmpp_2m" => "DPM++ 2M",
        "dpmpp_2m_karras" => "DPM++ 2M Karras",
        "pndm" => "PLMS",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_sampler_is_an_invalid_argument() {
        let err = scheduler_by_name("heun_fancy", &ScheduleConfig::sd15(), 10).unwrap_err();
        assert!(err.to_string().contains("heun_fancy"), "{err}");
    }

    #[test]
    fn zero_steps_is_an_invalid_argument() {
        for name in SCHEDULER_NAMES {
            assert!(
                scheduler_by_name(name, &ScheduleConfig::sd15(), 0).is_err(),
                "{name}"
            );
        }
    }

    #[test]
    fn img2img_start_reads_the_strength_as_written() {
        // Python: int(10 * 0.7) = 7 (the f32 0.7 is 0.699999988: 6 would start one step late).
        assert_eq!(img2img_start(10, 0.7), 3);
        assert_eq!(img2img_start(10, 1.0), 0);
        assert_eq!(img2img_start(10, 0.0), 10);
        assert_eq!(img2img_start(4, 0.5), 2);
        assert_eq!(img2img_start(3, 0.3), 3);
    }

    #[test]
    fn add_noise_refuses_an_index_past_the_schedule() {
        let config = ScheduleConfig::sd15();
        for name in SCHEDULER_NAMES {
            let scheduler = scheduler_by_name(name, &config, 4).unwrap();
            let len = scheduler.timesteps().len();
            assert!(scheduler.add_noise(len, &[0.0], &[0.0]).is_err(), "{name}");
            assert!(
                scheduler.add_noise(len - 1, &[0.0], &[1.0]).is_ok(),
                "{name}"
            );
        }
    }

    #[test]
    fn trailing_matches_numpy_arange() {
        // np.round(np.arange(1000, 0, -1000 / 3)) - 1 = [999, 666, 332]
        assert_eq!(trailing(1000, 3), vec![999, 666, 332]);
    }
}
