//! Euler and Euler ancestral (Karras et al. 2022, k-diffusion), as diffusers'
//! `EulerDiscreteScheduler` (no churn) and `EulerAncestralDiscreteScheduler`.

use stylus_core::{Result, StylusError};

use super::{
    ScheduleConfig, Scheduler, TimestepSpacing, TrainSchedule, add_sigma_noise, check_lengths,
    check_steps, index_error, linspace_at, trailing,
};

/// Fractional timesteps and their sigmas (plus a final 0), as float32 values like diffusers.
#[derive(Debug, Clone)]
struct SigmaSchedule {
    timesteps: Vec<f64>,
    /// `steps + 1` sigmas, the last one 0.
    sigmas: Vec<f64>,
    init_noise_sigma: f64,
}

impl SigmaSchedule {
    fn new(config: &ScheduleConfig, steps: usize) -> Result<Self> {
        check_steps(steps, config)?;
        let schedule = TrainSchedule::new(config)?;
        let n = config.num_train_timesteps;
        let spacing = config.spacing_or(TimestepSpacing::Linspace);
        let timesteps: Vec<f64> = match spacing {
            TimestepSpacing::Linspace => (0..steps)
                .rev()
                .map(|i| linspace_at(0.0, (n - 1) as f64, steps, i))
                .collect(),
            TimestepSpacing::Leading => {
                let ratio = n / steps;
                (0..steps)
                    .rev()
                    .map(|i| (i * ratio + config.steps_offset) as f64)
                    .collect()
            }
            TimestepSpacing::Trailing => trailing(n, steps).iter().map(|&t| t as f64).collect(),
        };
        let timesteps: Vec<f64> = timesteps.iter().map(|&t| f64::from(t as f32)).collect();
        let mut sigmas: Vec<f64> = timesteps
            .iter()
            .map(|&t| f64::from(schedule.interpolate_sigma(t) as f32))
            .collect();
        sigmas.push(0.0);
        let max_sigma = sigmas.iter().copied().fold(0.0, f64::max);
        let init_noise_sigma = match spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max_sigma,
            TimestepSpacing::Leading => (max_sigma * max_sigma + 1.0).sqrt(),
        };
        Ok(Self {
            timesteps,
            sigmas,
            init_noise_sigma,
        })
    }

    fn input_scale(&self, index: usize) -> f64 {
        let sigma = self.sigmas[index];
        1.0 / (sigma * sigma + 1.0).sqrt()
    }
}

/// Euler's method on the probability-flow ODE, plain or ancestral ("Euler a": an Euler step
/// down to `sigma_down`, then fresh noise of size `sigma_up`, the noise coming from the caller,
/// our own seeded RNG). Plain Euler is the ancestral step with `sigma_up = 0`.
#[derive(Debug, Clone)]
pub struct EulerScheduler {
    schedule: SigmaSchedule,
    ancestral: bool,
}

impl EulerScheduler {
    /// Euler over `steps` steps (default spacing `linspace`).
    pub fn new(config: &ScheduleConfig, steps: usize) -> Result<Self> {
        Ok(Self {
            schedule: SigmaSchedule::new(config, steps)?,
            ancestral: false,
        })
    }

    /// Euler ancestral over `steps` steps (default spacing `linspace`).
    pub fn ancestral(config: &ScheduleConfig, steps: usize) -> Result<Self> {
        Ok(Self {
            ancestral: true,
            ..Self::new(config, steps)?
        })
    }
}

impl Scheduler for EulerScheduler {
    fn sigmas(&self) -> Option<&[f64]> {
        Some(&self.schedule.sigmas)
    }

    fn timesteps(&self) -> &[f64] {
        &self.schedule.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        self.schedule.init_noise_sigma
    }

    fn model_input_scale(&self, index: usize) -> f64 {
        self.schedule.input_scale(index)
    }

    fn needs_noise(&self) -> bool {
        self.ancestral
    }

    fn add_noise(&self, index: usize, original: &[f32], noise: &[f32]) -> Result<Vec<f32>> {
        let len = self.schedule.timesteps.len();
        let sigma = *self
            .schedule
            .sigmas
            .get(index)
            .filter(|_| index < len)
            .ok_or_else(|| index_error(index, len))?;
        add_sigma_noise(sigma, original, noise)
    }

    fn step(
        &mut self,
        index: usize,
        model_output: &[f32],
        sample: &[f32],
        noise: Option<&[f32]>,
    ) -> Result<Vec<f32>> {
        check_lengths(model_output, sample, noise)?;
        let sigma_from = self.schedule.sigmas[index];
        let sigma_to = self.schedule.sigmas[index + 1];
        let (sigma_down, sigma_up, noise) = if self.ancestral {
            let noise = noise.ok_or_else(|| {
                StylusError::InvalidArgument("euler_ancestral step needs noise".to_string())
            })?;
            let sigma_up = (sigma_to * sigma_to * (sigma_from * sigma_from - sigma_to * sigma_to)
                / (sigma_from * sigma_from))
                .sqrt();
            let sigma_down = (sigma_to * sigma_to - sigma_up * sigma_up).sqrt();
            (sigma_down, sigma_up, Some(noise))
        } else {
            (sigma_to, 0.0, None)
        };
        let dt = sigma_down - sigma_from;
        Ok(model_output
            .iter()
            .zip(sample)
            .enumerate()
            .map(|(i, (&eps, &x))| {
                let (eps, x) = (f64::from(eps), f64::from(x));
                let denoised = x - sigma_from * eps;
                let derivative = (x - denoised) / sigma_from;
                let fresh = noise.map_or(0.0, |z| f64::from(z[i]) * sigma_up);
                (x + derivative * dt + fresh) as f32
            })
            .collect())
    }
}
