//! DPM-Solver++(2M) (Lu et al. 2022), as diffusers' `DPMSolverMultistepScheduler` with its
//! defaults (`dpmsolver++`, order 2, midpoint, `lower_order_final`, final sigma 0), optionally on
//! Karras sigmas: `use_karras_sigmas=True` is A1111's "DPM++ 2M Karras", the Stylus paper's
//! sampler.

use stylus_core::Result;

use super::{
    ScheduleConfig, Scheduler, TimestepSpacing, TrainSchedule, check_lengths, check_steps,
    index_error, linspace_at, trailing,
};

/// Karras et al.'s rho.
const KARRAS_RHO: f64 = 7.0;

/// DPM-Solver++ 2M.
#[derive(Debug, Clone)]
pub struct DpmSolverMultistepScheduler {
    timesteps: Vec<f64>,
    /// `steps + 1` sigmas, the last one 0.
    sigmas: Vec<f64>,
    /// The data prediction of the previous step.
    previous_x0: Option<Vec<f64>>,
}

impl DpmSolverMultistepScheduler {
    /// DPM++ 2M over `steps` steps (default spacing `linspace`), on Karras sigmas when `karras`.
    pub fn new(config: &ScheduleConfig, steps: usize, karras: bool) -> Result<Self> {
        check_steps(steps, config)?;
        let schedule = TrainSchedule::new(config)?;
        let n = config.num_train_timesteps;
        let integer: Vec<i64> = match config.spacing_or(TimestepSpacing::Linspace) {
            TimestepSpacing::Linspace => (1..=steps)
                .rev()
                .map(|i| linspace_at(0.0, (n - 1) as f64, steps + 1, i).round_ties_even() as i64)
                .collect(),
            TimestepSpacing::Leading => {
                let ratio = n / (steps + 1);
                (1..=steps)
                    .rev()
                    .map(|i| (i * ratio + config.steps_offset) as i64)
                    .collect()
            }
            TimestepSpacing::Trailing => trailing(n, steps),
        };
        let (timesteps, mut sigmas): (Vec<f64>, Vec<f64>) = if karras {
            let sigma_min = schedule.sigmas[0];
            let sigma_max = schedule.sigmas[n - 1];
            let (min_inv, max_inv) = (
                sigma_min.powf(1.0 / KARRAS_RHO),
                sigma_max.powf(1.0 / KARRAS_RHO),
            );
            let sigmas: Vec<f64> = (0..steps)
                .map(|i| {
                    let ramp = linspace_at(0.0, 1.0, steps, i);
                    (max_inv + ramp * (min_inv - max_inv)).powf(KARRAS_RHO)
                })
                .collect();
            let timesteps = sigmas
                .iter()
                .map(|&s| schedule.sigma_to_t(s).round_ties_even())
                .collect();
            (timesteps, sigmas)
        } else {
            let sigmas = integer
                .iter()
                .map(|&t| schedule.interpolate_sigma(t as f64))
                .collect();
            (integer.iter().map(|&t| t as f64).collect(), sigmas)
        };
        sigmas.push(0.0);
        let sigmas = sigmas.iter().map(|&s| f64::from(s as f32)).collect();
        Ok(Self {
            timesteps,
            sigmas,
            previous_x0: None,
        })
    }
}

/// (alpha_t, sigma_t, lambda_t) of a k-diffusion sigma.
fn alpha_sigma_lambda(sigma: f64) -> (f64, f64, f64) {
    let alpha_t = 1.0 / (sigma * sigma + 1.0).sqrt();
    let sigma_t = sigma * alpha_t;
    (alpha_t, sigma_t, alpha_t.ln() - sigma_t.ln())
}

impl Scheduler for DpmSolverMultistepScheduler {
    fn sigmas(&self) -> Option<&[f64]> {
        Some(&self.sigmas)
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// `alpha_t * original + sigma_t * noise` at the step's sigma (diffusers' DPM-Solver
    /// `add_noise`, which reads its own sigma table, Karras or not).
    fn add_noise(&self, index: usize, original: &[f32], noise: &[f32]) -> Result<Vec<f32>> {
        if index >= self.timesteps.len() {
            return Err(index_error(index, self.timesteps.len()));
        }
        check_lengths(original, original, Some(noise))?;
        let (alpha_t, sigma_t, _) = alpha_sigma_lambda(self.sigmas[index]);
        Ok(original
            .iter()
            .zip(noise)
            .map(|(&x, &z)| (alpha_t * f64::from(x) + sigma_t * f64::from(z)) as f32)
            .collect())
    }

    fn step(
        &mut self,
        index: usize,
        model_output: &[f32],
        sample: &[f32],
        noise: Option<&[f32]>,
    ) -> Result<Vec<f32>> {
        check_lengths(model_output, sample, noise)?;
        let steps = self.timesteps.len();
        let (alpha_s0, sigma_s0, lambda_s0) = alpha_sigma_lambda(self.sigmas[index]);
        let (alpha_t, sigma_t, lambda_t) = alpha_sigma_lambda(self.sigmas[index + 1]);
        let x0: Vec<f64> = model_output
            .iter()
            .zip(sample)
            .map(|(&eps, &x)| (f64::from(x) - sigma_s0 * f64::from(eps)) / alpha_s0)
            .collect();
        // The first step has no history; the final sigma is 0, so the last step is first order.
        let first_order = index == steps - 1 || self.previous_x0.is_none();
        let h = lambda_t - lambda_s0;
        let ratio = sigma_t / sigma_s0;
        let coeff = alpha_t * ((-h).exp() - 1.0);
        let out: Vec<f32> = if first_order {
            sample
                .iter()
                .zip(&x0)
                .map(|(&x, &d0)| (ratio * f64::from(x) - coeff * d0) as f32)
                .collect()
        } else {
            let previous = self.previous_x0.as_ref().expect("checked above");
            let (_, _, lambda_s1) = alpha_sigma_lambda(self.sigmas[index - 1]);
            let r0 = (lambda_s0 - lambda_s1) / h;
            sample
                .iter()
                .zip(&x0)
                .zip(previous)
                .map(|((&x, &d0), &m1)| {
                    let d1 = (1.0 / r0) * (d0 - m1);
                    (ratio * f64::from(x) - coeff * d0 - 0.5 * coeff * d1) as f32
                })
                .collect()
        };
        self.previous_x0 = Some(x0);
        Ok(out)
    }
}
