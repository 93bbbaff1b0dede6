//! Merging a weighted set of parsed adapters into base weights, target by target, in f32.
//!
//! The caller supplies each touched target's base weight (PyTorch layout, f32) and gets back the
//! merged weights; nothing else is read or written, which is what makes switching adapter sets
//! cost only the touched weights. Used by [`super::LoraMerger`] (burn modules) and by
//! `stylus merge` (safetensors tensors by name).

use std::collections::BTreeMap;

use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion as _, Tensor};
use stylus_core::{Result, StylusError};

use super::adapter::{AdapterModule, LoraAdapter};
use super::delta::apply_module;
use super::targets::{Network, TargetModule, TargetTable};

/// The largest strength accepted (policy, research note §8.4 check 12).
pub const MAX_STRENGTH: f32 = 4.0;

/// An adapter with its strengths for the UNet and the text encoder.
#[derive(Debug, Clone, Copy)]
pub struct ScaledAdapter<'a> {
    /// The parsed file.
    pub adapter: &'a LoraAdapter,
    /// Multiplier of the UNet modules.
    pub unet: f32,
    /// Multiplier of the text-encoder modules.
    pub text_encoder: f32,
}

impl ScaledAdapter<'_> {
    /// The multiplier of this adapter's modules on `network`.
    pub fn strength(&self, network: Network) -> f32 {
        match network {
            Network::Unet => self.unet,
            Network::TextEncoder => self.text_encoder,
        }
    }
}

/// A target's base tensors in f32: weight `[out, in*kh*kw]` (PyTorch layout) and bias.
pub type BaseTensors<B> = (Tensor<B, 2>, Option<Tensor<B, 1>>);

/// The merged weights of one target.
#[derive(Debug, Clone)]
pub struct MergedWeight<B: Backend> {
    /// Index in the [`TargetTable`].
    pub target: usize,
    /// f32 weight `[out, in*kh*kw]` in PyTorch layout.
    pub weight: Tensor<B, 2>,
    /// f32 bias, when an adapter changed it (full `diff_b`).
    pub bias: Option<Tensor<B, 1>>,
}

/// Checks that a strength is finite and within [`MAX_STRENGTH`].
pub fn check_strength(strength: f32, what: &str) -> Result<()> {
    if !strength.is_finite() || strength.abs() > MAX_STRENGTH {
        return Err(StylusError::InvalidArgument(format!(
            "{what}: strength {strength} must be finite and within ±{MAX_STRENGTH}"
        )));
    }
    Ok(())
}

/// The modules of `adapters` with a non-zero strength, grouped by target in application order,
/// each with its strength; strengths are checked first.
pub fn modules_by_target<'a>(
    adapters: &'a [ScaledAdapter<'a>],
) -> Result<BTreeMap<usize, Vec<(&'a ScaledAdapter<'a>, &'a AdapterModule)>>> {
    let mut by_target: BTreeMap<usize, Vec<(&ScaledAdapter<'_>, &AdapterModule)>> = BTreeMap::new();
    for scaled in adapters {
        check_strength(scaled.unet, &scaled.adapter.path.display().to_string())?;
        check_strength(
            scaled.text_encoder,
            &scaled.adapter.path.display().to_string(),
        )?;
        for module in &scaled.adapter.modules {
            if scaled.strength(module.network) != 0.0 {
                by_target
                    .entry(module.target)
                    .or_default()
                    .push((scaled, module));
            }
        }
    }
    Ok(by_target)
}

/// Merges `adapters` (applied in order) into the base weights that `base` returns for each
/// touched target. Returns the merged weights, or an error naming the module when a result is
/// not finite; nothing is partially applied because nothing is written here.
pub fn merge_targets<B: Backend>(
    table: &TargetTable,
    adapters: &[ScaledAdapter<'_>],
    base: impl FnMut(&TargetModule) -> Result<BaseTensors<B>>,
    device: &B::Device,
) -> Result<Vec<MergedWeight<B>>> {
    merge_selected(table, adapters, |_| true, base, device)
}

/// [`merge_targets`] restricted to the targets `selected` accepts (by table index).
pub fn merge_selected<B: Backend>(
    table: &TargetTable,
    adapters: &[ScaledAdapter<'_>],
    selected: impl Fn(usize) -> bool,
    mut base: impl FnMut(&TargetModule) -> Result<BaseTensors<B>>,
    device: &B::Device,
) -> Result<Vec<MergedWeight<B>>> {
    let by_target = modules_by_target(adapters)?;
    let mut merged = Vec::with_capacity(by_target.len());
    for (target_index, modules) in by_target {
        if !selected(target_index) {
            continue;
        }
        let target = table.module(target_index);
        let (mut weight, mut bias) = base(target)?;
        let original_bias = bias.is_some();
        for (scaled, module) in &modules {
            (weight, bias) = apply_module(
                module,
                target,
                scaled.strength(module.network),
                weight,
                bias,
                device,
            );
        }
        let finite = all_finite(weight.clone()) && bias.clone().is_none_or(all_finite);
        if !finite {
            return Err(non_finite_merge(&modules, target));
        }
        let bias_changed = original_bias
            && modules.iter().any(|(_, m)| {
                matches!(
                    m.kind,
                    super::AdapterKind::Full {
                        diff_b: Some(_),
                        ..
                    }
                )
            });
        merged.push(MergedWeight {
            target: target_index,
            weight,
            bias: bias.filter(|_| bias_changed),
        });
    }
    Ok(merged)
}

/// The error of a merge into `target` whose result is not finite, naming the first of the
/// `modules` merged into it.
pub fn non_finite_merge(
    modules: &[(&ScaledAdapter<'_>, &AdapterModule)],
    target: &TargetModule,
) -> StylusError {
    let (scaled, module) = modules[0];
    StylusError::tensor(
        &scaled.adapter.path,
        &module.name,
        format!(
            "merging into `{}` gives non-finite weights; nothing was applied",
            target.id
        ),
    )
}

/// Whether every value of `tensor` is finite.
pub fn all_finite<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> bool {
    tensor.is_finite().all().into_scalar().elem::<bool>()
}
