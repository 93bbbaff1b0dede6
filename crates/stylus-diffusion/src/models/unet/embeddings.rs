//! Timestep embedding: diffusers `Timesteps` (sinusoidal projection) and `TimestepEmbedding`
//! (`linear_1`, SiLU, `linear_2`).

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// The sinusoidal projection of `timesteps` to `dim` features, `[len, dim]`.
///
/// Computed on the host in f32 with the same operation order as diffusers'
/// `get_timestep_embedding` (`exp(-ln(10000) * i / (half - shift))`, then `t * freq`), so the
/// arguments of sin/cos match PyTorch's to the last bit at large timesteps.
pub fn timestep_projection<B: Backend>(
    timesteps: &[f32],
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
    device: &B::Device,
) -> Tensor<B, 2> {
    let half = dim / 2;
    let log_max_period = -(10000f64.ln()) as f32;
    let frequencies: Vec<f32> = (0..half)
        .map(|i| (log_max_period * i as f32 / (half as f32 - freq_shift as f32)).exp())
        .collect();
    let mut values = Vec::with_capacity(timesteps.len() * dim);
    for &t in timesteps {
        let arguments: Vec<f32> = frequencies.iter().map(|f| t * f).collect();
        let sin = arguments.iter().map(|a| a.sin());
        let cos = arguments.iter().map(|a| a.cos());
        if flip_sin_to_cos {
            values.extend(cos.chain(sin));
        } else {
            values.extend(sin.chain(cos));
        }
        // An odd `dim` is zero-padded, as in diffusers.
        values.extend(std::iter::repeat_n(0.0, dim - 2 * half));
    }
    Tensor::from_data(TensorData::new(values, [timesteps.len(), dim]), device)
}

/// diffusers `TimestepEmbedding`: `linear_2(silu(linear_1(x)))`.
#[derive(Module, Debug)]
pub struct TimestepEmbedding<B: Backend> {
    /// Projection to the time-embedding width.
    pub linear_1: Linear<B>,
    /// Second projection.
    pub linear_2: Linear<B>,
}

impl<B: Backend> TimestepEmbedding<B> {
    /// An embedding from `channels` sinusoidal features to `time_embed_dim`.
    pub fn new(channels: usize, time_embed_dim: usize, device: &B::Device) -> Self {
        Self {
            linear_1: LinearConfig::new(channels, time_embed_dim).init(device),
            linear_2: LinearConfig::new(time_embed_dim, time_embed_dim).init(device),
        }
    }

    /// `[b, channels] -> [b, time_embed_dim]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.linear_2.forward(silu(self.linear_1.forward(x)))
    }
}
