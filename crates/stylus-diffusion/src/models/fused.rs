//! Fused kernels for the CPU backend, picked at run time, with burn's ops everywhere else.
//!
//! [`group_norm`]: GroupNorm, optionally followed by SiLU, in one parallel pass per group. The
//! per-op profile of a full-size UNet call (docs/benchmarks.md, issue 15) put burn-nn's GroupNorm
//! at ~6% of the call: it is built from broadcasting ops whose `[1, c, 1, 1]` affine falls into
//! burn-flex's generic strided iterator. On [`CpuBackend`] with f32 activations the group's
//! values are contiguous (`[b, c, h, w]`, a group is `c / groups` whole channels), so mean and
//! variance (two passes, f64 accumulators), the per-channel affine and the SiLU run over each
//! group's slice directly. Other backends and dtypes keep burn's `GroupNorm::forward` (+ `silu`).

use std::any::TypeId;

use burn::nn::GroupNorm;
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};
use rayon::prelude::*;

use crate::backend::CpuBackend;

/// `norm(x)`, then SiLU when `then_silu`; `x` is `[batch, channels, ...]`.
pub fn group_norm<B: Backend, const D: usize>(
    norm: &GroupNorm<B>,
    x: Tensor<B, D>,
    then_silu: bool,
) -> Tensor<B, D> {
    let fused = TypeId::of::<B>() == TypeId::of::<CpuBackend>()
        && x.dtype() == DType::F32
        && norm.affine
        && D >= 3;
    let (Some(gamma), Some(beta), true) = (&norm.gamma, &norm.beta, fused) else {
        let normalized = norm.forward(x);
        return if then_silu {
            silu(normalized)
        } else {
            normalized
        };
    };
    let dims = x.dims();
    let device = x.device();
    let channels = dims[1];
    let spatial: usize = dims[2..].iter().product();
    let groups = norm.num_groups;
    let per_group = channels / groups;
    let epsilon = norm.epsilon;
    let floats = |t: Tensor<B, 1>| t.into_data().convert::<f32>().into_vec::<f32>();
    let (Ok(gamma), Ok(beta), Ok(mut values)) = (
        floats(gamma.val()),
        floats(beta.val()),
        x.into_data().into_vec::<f32>(),
    ) else {
        unreachable!("f32 tensors of the CPU backend convert to Vec<f32>");
    };
    values
        .par_chunks_mut(per_group * spatial)
        .enumerate()
        .for_each(|(chunk, group)| {
            let first_channel = (chunk % groups) * per_group;
            let count = group.len() as f64;
            let mean = group.iter().map(|&v| f64::from(v)).sum::<f64>() / count;
            let variance = group
                .iter()
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum::<f64>()
                / count;
            let inverse = 1.0 / (variance + epsilon).sqrt();
            for (offset, channel) in group.chunks_mut(spatial).enumerate() {
                let c = first_channel + offset;
                let scale = inverse * f64::from(gamma[c]);
                let shift = f64::from(beta[c]) - mean * scale;
                let (scale, shift) = (scale as f32, shift as f32);
                if then_silu {
                    for v in channel {
                        let y = *v * scale + shift;
                        *v = y / (1.0 + (-y).exp());
                    }
                } else {
                    for v in channel {
                        *v = *v * scale + shift;
                    }
                }
            }
        });
    Tensor::from_data(TensorData::new(values, dims.to_vec()), &device)
}

#[cfg(test)]
mod tests {
    use burn::nn::GroupNormConfig;
    use burn::tensor::Distribution;

    use super::*;
    use crate::backend::cpu_device;

    #[test]
    fn fused_group_norm_matches_burn_with_and_without_silu() {
        let device = cpu_device();
        let norm = GroupNormConfig::new(4, 12)
            .with_epsilon(1e-5)
            .init::<CpuBackend>(&device);
        let norm = GroupNorm {
            gamma: Some(
                norm.gamma
                    .unwrap()
                    .map(|g| g.clone().random_like(Distribution::Normal(1.0, 0.5)) + g * 0.0),
            ),
            beta: Some(
                norm.beta
                    .unwrap()
                    .map(|b| b.random_like(Distribution::Normal(0.0, 0.5))),
            ),
            ..norm
        };
        let x =
            Tensor::<CpuBackend, 4>::random([2, 12, 5, 3], Distribution::Normal(0.3, 2.0), &device);
        for then_silu in [false, true] {
            let reference = norm.forward(x.clone());
            let reference = if then_silu {
                silu(reference)
            } else {
                reference
            };
            let fused = group_norm(&norm, x.clone(), then_silu);
            let error = (fused - reference.clone()).abs().max().into_scalar();
            let scale = reference.abs().max().into_scalar();
            assert!(
                error <= 1e-5 * scale,
                "silu {then_silu}: {error} vs {scale}"
            );
        }
    }
}
