//! PNDM in its PLMS form (`skip_prk_steps`: linear multistep on the noise predictions), as
//! diffusers' `PNDMScheduler`, SD 1.5's default scheduler. It makes `steps + 1` model calls: the
//! first timestep is evaluated twice (a Heun-like warm-up).

use stylus_core::Result;

use super::{
    ScheduleConfig, Scheduler, TimestepSpacing, TrainSchedule, check_lengths, check_steps,
    index_error,
};

/// PLMS.
#[derive(Debug, Clone)]
pub struct PndmScheduler {
    schedule: TrainSchedule,
    timesteps: Vec<f64>,
    integer_timesteps: Vec<i64>,
    step_back: i64,
    /// Past noise predictions, oldest first (at most 4).
    ets: Vec<Vec<f64>>,
    /// The sample at the first timestep, kept for the warm-up's second evaluation.
    first_sample: Vec<f64>,
    counter: usize,
}

impl PndmScheduler {
    /// PLMS over `steps` steps (default spacing `leading`).
    pub fn new(config: &ScheduleConfig, steps: usize) -> Result<Self> {
        check_steps(steps, config)?;
        let schedule = TrainSchedule::new(config)?;
        let spacing = config.spacing_or(TimestepSpacing::Leading);
        // PNDM's own table is ascending; the model sees it descending with the second-to-last
        // entry repeated.
        let mut ascending = schedule.integer_timesteps(spacing, steps, config.steps_offset);
        ascending.reverse();
        let mut plms: Vec<i64> = ascending[..steps - 1].to_vec();
        if steps >= 2 {
            plms.push(ascending[steps - 2]);
        }
        plms.push(ascending[steps - 1]);
        plms.reverse();
        Ok(Self {
            timesteps: plms.iter().map(|&t| t as f64).collect(),
            integer_timesteps: plms,
            step_back: (config.num_train_timesteps / steps) as i64,
            schedule,
            ets: Vec::new(),
            first_sample: Vec::new(),
            counter: 0,
        })
    }

    fn alpha_cumprod(&self, t: i64) -> f64 {
        // set_alpha_to_one = false: before t = 0 comes alphas_cumprod[0].
        self.schedule.alphas_cumprod[t.max(0) as usize]
    }
}

impl Scheduler for PndmScheduler {
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
        let eps: Vec<f64> = model_output.iter().map(|&v| f64::from(v)).collect();
        let mut x: Vec<f64> = sample.iter().map(|&v| f64::from(v)).collect();
        let mut t = self.integer_timesteps[index];
        let mut prev = t - self.step_back;
        if self.counter == 1 {
            // Second evaluation of the first timestep: step again from the first sample.
            prev = t;
            t += self.step_back;
        } else {
            if self.ets.len() == 4 {
                self.ets.remove(0);
            }
            self.ets.push(eps.clone());
        }
        let e = &self.ets;
        let n = e.len();
        let combined: Vec<f64> = if n == 1 && self.counter == 0 {
            self.first_sample = x.clone();
            eps
        } else if n == 1 && self.counter == 1 {
            x = std::mem::take(&mut self.first_sample);
            eps.iter().zip(&e[0]).map(|(a, b)| (a + b) / 2.0).collect()
        } else if n == 2 {
            (0..eps.len())
                .map(|i| (3.0 * e[1][i] - e[0][i]) / 2.0)
                .collect()
        } else if n == 3 {
            (0..eps.len())
                .map(|i| (23.0 * e[2][i] - 16.0 * e[1][i] + 5.0 * e[0][i]) / 12.0)
                .collect()
        } else {
            (0..eps.len())
                .map(|i| {
                    (1.0 / 24.0)
                        * (55.0 * e[3][i] - 59.0 * e[2][i] + 37.0 * e[1][i] - 9.0 * e[0][i])
                })
                .collect()
        };
        let alpha = self.alpha_cumprod(t);
        let alpha_prev = self.alpha_cumprod(prev);
        let (beta, beta_prev) = (1.0 - alpha, 1.0 - alpha_prev);
        let sample_coeff = (alpha_prev / alpha).sqrt();
        let denom = alpha * beta_prev.sqrt() + (alpha * beta * alpha_prev).sqrt();
        self.counter += 1;
        Ok(x.iter()
            .zip(&combined)
            .map(|(&x, &eps)| (sample_coeff * x - (alpha_prev - alpha) * eps / denom) as f32)
            .collect())
    }
}
