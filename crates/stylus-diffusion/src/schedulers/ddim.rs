//! DDIM (Song et al. 2020) with eta = 0, as diffusers' `DDIMScheduler` with `set_alpha_to_one`
//! false (Stable Diffusion's setting).

use stylus_core::Result;

use super::{
    ScheduleConfig, Scheduler, TimestepSpacing, TrainSchedule, check_lengths, check_steps,
    index_error,
};

/// Deterministic DDIM.
#[derive(Debug, Clone)]
pub struct DdimScheduler {
    schedule: TrainSchedule,
    timesteps: Vec<f64>,
    integer_timesteps: Vec<i64>,
    /// diffusers steps back by `T / steps` whatever the spacing.
    step_back: i64,
}

impl DdimScheduler {
    /// DDIM over `steps` steps (default spacing `leading`).
    pub fn new(config: &ScheduleConfig, steps: usize) -> Result<Self> {
        check_steps(steps, config)?;
        let schedule = TrainSchedule::new(config)?;
        let spacing = config.spacing_or(TimestepSpacing::Leading);
        let integer_timesteps = schedule.integer_timesteps(spacing, steps, config.steps_offset);
        Ok(Self {
            timesteps: integer_timesteps.iter().map(|&t| t as f64).collect(),
            integer_timesteps,
            step_back: (config.num_train_timesteps / steps) as i64,
            schedule,
        })
    }
}

impl Scheduler for DdimScheduler {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn add_noise(&self, index: usize, original: &[f32], noise: &[f32]) -> Result<Vec<f32>> {
        let t = *self
            .integer_timesteps
            .get(index)
            .ok_or_else(|| index_error(index, self.integer_timesteps.len()))?;
        self.schedule.add_noise_at(t, original, noise)
    }

    fn step(
        &mut self,
        index: usize,
        model_output: &[f32],
        sample: &[f32],
        noise: Option<&[f32]>,
    ) -> Result<Vec<f32>> {
        check_lengths(model_output, sample, noise)?;
        let t = self.integer_timesteps[index];
        let prev = t - self.step_back;
        let alpha = self.schedule.alphas_cumprod[t as usize];
        // set_alpha_to_one = false: the step past t = 0 uses alphas_cumprod[0].
        let alpha_prev = if prev >= 0 {
            self.schedule.alphas_cumprod[prev as usize]
        } else {
            self.schedule.alphas_cumprod[0]
        };
        let (sqrt_alpha, sqrt_beta) = (alpha.sqrt(), (1.0 - alpha).sqrt());
        let (sqrt_alpha_prev, direction) = (alpha_prev.sqrt(), (1.0 - alpha_prev).sqrt());
        Ok(model_output
            .iter()
            .zip(sample)
            .map(|(&eps, &x)| {
                let (eps, x) = (f64::from(eps), f64::from(x));
                let x0 = (x - sqrt_beta * eps) / sqrt_alpha;
                (sqrt_alpha_prev * x0 + direction * eps) as f32
            })
            .collect())
    }
}
