//! The weight change of one adapter module, computed in f32 on any burn backend.
//!
//! Every weight is handled as a matrix in PyTorch layout, `[out, in]` for a linear and
//! `[out, in * kh * kw]` for a convolution (the row-major flattening of `[out, in, kh, kw]`), so
//! one code path serves linears, 1x1 and kxk convolutions and the old flattened LyCORIS conv
//! layout. Math per research/lora-formats.md §8.3:
//!
//! - LoRA/LoCon: `D = up @ down`, or the Tucker form `einsum(mid, up, down)` with `lora_mid`;
//! - LoHa: `D = (w1_a @ w1_b) ⊙ (w2_a @ w2_b)` (each factor possibly Tucker);
//! - LoKr: `D = kron(w1, w2)` with `w = w_a @ w_b` (or Tucker) for decomposed factors;
//! - full: `D = diff`; (IA)^3: `D = W ⊙ w` per output row (or input column);
//! - `W += strength * scale * D`, where `scale` is alpha / rank (see [`AdapterModule::scale`]);
//! - DoRA (`dora_scale` m): `Wc = W + scale * D`, `Wd = m * Wc / (‖Wc‖ + eps)` with the norm per
//!   output row when m is `[out, 1..]` and per input channel (over outputs and kernel) when m is
//!   `[1, in, ..]`, then `W += strength * (Wd - W)` (ComfyUI/A1111 semantics; eps is f32's).

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::adapter::{AdapterKind, AdapterModule, DoraAxis, Factor, KronFactor};
use super::parse::kron_dims;
use super::targets::TargetModule;

/// `factor` as a `[rows, cols]` f32 matrix.
fn matrix<B: Backend>(factor: &Factor, device: &B::Device) -> Tensor<B, 2> {
    Tensor::from_data(
        TensorData::new(factor.values.clone(), [factor.rows(), factor.cols()]),
        device,
    )
}

/// `einsum("p q h w, o p, q i -> o i h w", core, left, right)` flattened to `[o, i*h*w]`, for a
/// core `[p, q, h, w]`, `left` `[o, p]` and `right` `[q, i]`.
fn tucker<B: Backend>(
    core: &Factor,
    left: Tensor<B, 2>,
    right: Tensor<B, 2>,
    device: &B::Device,
) -> Tensor<B, 2> {
    let [p, q, h, w] = [core.shape[0], core.shape[1], core.shape[2], core.shape[3]];
    let [o, _] = left.dims();
    let [_, i] = right.dims();
    let core = matrix::<B>(core, device).reshape([p, q * h * w]);
    let left_applied = left.matmul(core); // [o, q*h*w]
    let by_position = left_applied
        .reshape([o, q, h * w])
        .swap_dims(1, 2)
        .reshape([o * h * w, q]);
    by_position
        .matmul(right) // [o*h*w, i]
        .reshape([o, h * w, i])
        .swap_dims(1, 2)
        .reshape([o, i * h * w])
}

/// `kron(a, b)` of two matrices.
fn kron<B: Backend>(a: Tensor<B, 2>, b: Tensor<B, 2>) -> Tensor<B, 2> {
    let [ra, ca] = a.dims();
    let [rb, cb] = b.dims();
    let product = a.reshape([ra, 1, ca, 1]) * b.reshape([1, rb, 1, cb]);
    product.reshape([ra * rb, ca * cb])
}

fn kron_factor<B: Backend>(factor: &KronFactor, device: &B::Device) -> Tensor<B, 2> {
    match factor {
        KronFactor::Whole(w) => matrix(w, device),
        KronFactor::Decomposed { a, b, tucker: None } => {
            matrix::<B>(a, device).matmul(matrix(b, device))
        }
        KronFactor::Decomposed {
            a,
            b,
            tucker: Some(core),
        } => {
            let (rows, cols) = kron_dims(factor);
            let left = matrix::<B>(a, device).transpose();
            tucker(core, left, matrix(b, device), device).reshape([rows, cols])
        }
    }
}

/// The unscaled adapter matrix `D` of an additive module, `[out, in*kh*kw]`; `None` for (IA)^3,
/// which multiplies the weight instead.
pub fn adapter_matrix<B: Backend>(
    module: &AdapterModule,
    target: &TargetModule,
    device: &B::Device,
) -> Option<Tensor<B, 2>> {
    let shape = [target.out_features(), target.in_elements()];
    let matrix = match &module.kind {
        AdapterKind::Lora {
            up,
            down,
            mid: None,
        } => matrix::<B>(up, device).matmul(matrix(down, device)),
        AdapterKind::Lora {
            up,
            down,
            mid: Some(mid),
        } => tucker(mid, matrix(up, device), matrix(down, device), device),
        AdapterKind::Loha {
            w1_a,
            w1_b,
            w2_a,
            w2_b,
            tucker: None,
        } => {
            let first = matrix::<B>(w1_a, device).matmul(matrix(w1_b, device));
            let second = matrix::<B>(w2_a, device).matmul(matrix(w2_b, device));
            first * second
        }
        AdapterKind::Loha {
            w1_a,
            w1_b,
            w2_a,
            w2_b,
            tucker: Some((t1, t2)),
        } => {
            let first = tucker(
                t1,
                matrix::<B>(w1_a, device).transpose(),
                matrix(w1_b, device),
                device,
            );
            let second = tucker(
                t2,
                matrix::<B>(w2_a, device).transpose(),
                matrix(w2_b, device),
                device,
            );
            first * second
        }
        AdapterKind::Lokr { w1, w2 } => kron(kron_factor::<B>(w1, device), kron_factor(w2, device)),
        AdapterKind::Full { diff, .. } => matrix(diff, device),
        AdapterKind::Ia3 { .. } => return None,
    };
    Some(matrix.reshape(shape))
}

/// `scale * D` of an additive module without DoRA, `[out, in*kh*kw]` (the reference values of
/// research notes and tests); `None` for (IA)^3 and DoRA modules, whose change depends on `W`.
pub fn module_delta<B: Backend>(
    module: &AdapterModule,
    target: &TargetModule,
    device: &B::Device,
) -> Option<Tensor<B, 2>> {
    if module.dora.is_some() {
        return None;
    }
    adapter_matrix(module, target, device).map(|d| d.mul_scalar(module.scale))
}

/// Applies `module` at `strength` to the f32 weight `weight` (`[out, in*kh*kw]`, PyTorch
/// layout) and its bias; returns the new weight and bias.
pub fn apply_module<B: Backend>(
    module: &AdapterModule,
    target: &TargetModule,
    strength: f32,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
    device: &B::Device,
) -> (Tensor<B, 2>, Option<Tensor<B, 1>>) {
    let [out, cols] = weight.dims();
    let bias = match (&module.kind, bias) {
        (
            AdapterKind::Full {
                diff_b: Some(diff_b),
                ..
            },
            Some(bias),
        ) => Some(
            bias + Tensor::<B, 1>::from_data(
                TensorData::new(diff_b.values.clone(), [diff_b.numel()]),
                device,
            )
            .mul_scalar(strength),
        ),
        (_, bias) => bias,
    };
    if let AdapterKind::Ia3 {
        weight: w,
        on_input,
    } = &module.kind
    {
        let vector =
            Tensor::<B, 1>::from_data(TensorData::new(w.values.clone(), [w.numel()]), device);
        let scaled = if *on_input {
            let inputs = w.numel();
            let kernel = cols / inputs;
            (weight.clone().reshape([out, inputs, kernel]) * vector.reshape([1, inputs, 1]))
                .reshape([out, cols])
        } else {
            weight.clone() * vector.reshape([out, 1])
        };
        return (weight + scaled.mul_scalar(strength), bias);
    }
    let delta = adapter_matrix(module, target, device)
        .expect("every kind but IA3 is additive")
        .mul_scalar(module.scale);
    let Some(dora) = &module.dora else {
        return (weight + delta.mul_scalar(strength), bias);
    };
    let combined = weight.clone() + delta;
    let decomposed = match dora.axis {
        DoraAxis::Output => {
            let norm = combined
                .clone()
                .powi_scalar(2)
                .sum_dim(1)
                .sqrt()
                .add_scalar(f32::EPSILON);
            let magnitude =
                Tensor::<B, 1>::from_data(TensorData::new(dora.scale.clone(), [out]), device)
                    .reshape([out, 1]);
            combined * magnitude / norm
        }
        DoraAxis::Input => {
            let inputs = dora.scale.len();
            let kernel = cols / inputs;
            let by_input = combined.reshape([out, inputs, kernel]);
            let norm = by_input
                .clone()
                .powi_scalar(2)
                .sum_dim(2)
                .sum_dim(0)
                .sqrt()
                .add_scalar(f32::EPSILON);
            let magnitude =
                Tensor::<B, 1>::from_data(TensorData::new(dora.scale.clone(), [inputs]), device)
                    .reshape([1, inputs, 1]);
            (by_input * magnitude / norm).reshape([out, cols])
        }
    };
    let change = (decomposed - weight.clone()).mul_scalar(strength);
    (weight + change, bias)
}

/// Whether `module` is a plain low-rank product `up @ down` (no Tucker core, no DoRA): the
/// modules whose changes add up linearly, so several can share one matmul.
pub fn is_plain_lora(module: &AdapterModule) -> bool {
    module.dora.is_none() && matches!(module.kind, AdapterKind::Lora { mid: None, .. })
}

/// The summed change `sum_m strength_m * scale_m * up_m @ down_m` of plain LoRA modules
/// ([`is_plain_lora`]) on one target, as a single matmul over the concatenated factors (ranks
/// stacked), computed directly in the base weight's layout: `[in, out]` for a burn `Linear`
/// (`linear`), `[out, in*kh*kw]` otherwise, so the base is never transposed.
///
/// Also returns a bound on the absolute value of every entry, `sum_r max|down_r| * max|up_r|`
/// over the stacked ranks (scaled), which lets the caller prove the merged weight finite without
/// reading it again.
pub fn fused_lora_delta<B: Backend>(
    modules: &[(f32, &AdapterModule)],
    target: &TargetModule,
    linear: bool,
    device: &B::Device,
) -> (Tensor<B, 2>, f32) {
    let out = target.out_features();
    let cols = target.in_elements();
    let factors: Vec<(&Factor, &Factor, f32)> = modules
        .iter()
        .filter_map(|(strength, module)| match &module.kind {
            AdapterKind::Lora { up, down, .. } => Some((up, down, strength * module.scale)),
            _ => None,
        })
        .collect();
    let rank: usize = factors.iter().map(|(up, _, _)| up.cols()).sum();
    // `left` is [out, R] (conv) or, transposed, [R, out] (linear); `right` is [R, cols] (conv)
    // or [cols, R] (linear). Row-major, built on the host: the factors are small.
    let mut left = vec![0.0f32; out * rank];
    let mut right = vec![0.0f32; rank * cols];
    let mut bound = 0.0f32;
    let mut offset = 0;
    for (up, down, scale) in factors {
        let r = up.cols();
        for k in 0..r {
            let mut up_max = 0.0f32;
            for o in 0..out {
                let value = up.values[o * r + k] * scale;
                up_max = up_max.max(value.abs());
                let index = if linear {
                    (offset + k) * out + o
                } else {
                    o * rank + offset + k
                };
                left[index] = value;
            }
            let mut down_max = 0.0f32;
            for c in 0..cols {
                let value = down.values[k * cols + c];
                down_max = down_max.max(value.abs());
                let index = if linear {
                    c * rank + offset + k
                } else {
                    (offset + k) * cols + c
                };
                right[index] = value;
            }
            bound += up_max * down_max;
        }
        offset += r;
    }
    let delta = if linear {
        let right = Tensor::<B, 2>::from_data(TensorData::new(right, [cols, rank]), device);
        let left = Tensor::<B, 2>::from_data(TensorData::new(left, [rank, out]), device);
        right.matmul(left)
    } else {
        let left = Tensor::<B, 2>::from_data(TensorData::new(left, [out, rank]), device);
        let right = Tensor::<B, 2>::from_data(TensorData::new(right, [rank, cols]), device);
        left.matmul(right)
    };
    (delta, bound)
}
