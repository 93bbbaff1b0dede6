//! Putting file tensors into a model: each tensor becomes a lazily-decoded burn-store
//! [`TensorSnapshot`] under burn's own parameter path (`gamma`/`beta` for norms), already in
//! burn's layout (a `Linear` weight is transposed to `[in, out]` while it is decoded, in one
//! blocked parallel pass, instead of by burn-store's `PyTorchToBurnAdapter`, whose per-element
//! byte copy took seconds on the full UNet), and [`ModuleSnapshot::apply`] writes them into the
//! parameters, converted to the requested dtype.
//!
//! burn-store's own `SafetensorsStore` is not used because single-file checkpoints need the
//! index-dependent LDM name mapping, 1x1-conv squeezing and per-tensor typed errors; the reader in
//! [`super::safetensors_file`] provides those and hands burn-store the same snapshots.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use burn::module::{Module, ParamId};
use burn::store::{ApplyError, ModuleSnapshot, TensorSnapshot, TensorSnapshotError};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Shape};
use stylus_core::{Result, StylusError};

use super::Component;
use super::report::{ComponentReport, check_apply_result};
use super::safetensors_file::SafetensorsFile;
use crate::models::parameters::parameters;

/// One file tensor destined for one model parameter.
#[derive(Debug, Clone)]
pub struct PlannedTensor {
    /// Key in the file.
    pub source_key: String,
    /// diffusers name (= our module path, with PyTorch parameter names).
    pub target: String,
    /// Shape to present (the file's, or squeezed from a 1x1 convolution).
    pub shape: Vec<usize>,
}

/// Loads `planned` tensors of `file` into `model` in `dtype`, then checks that every model
/// parameter was loaded exactly once with the right shape.
pub fn apply_tensors<B: Backend, M: Module<B>>(
    model: &mut M,
    component: Component,
    file: &SafetensorsFile,
    planned: Vec<PlannedTensor>,
    ignored: Vec<String>,
    dtype: DType,
) -> Result<ComponentReport> {
    // Snapshots are keyed by burn's own parameter paths (`gamma`/`beta` for norms): burn-store
    // 0.21 can find `weight`/`bias` through the adapter's alternative names, but then still lists
    // those tensors as unused, which would defeat the completeness check.
    let burn_paths: HashMap<String, (String, bool)> = parameters::<B, M>(model)
        .into_iter()
        .map(|p| {
            let linear_weight = p.module_type == "Linear" && p.path.ends_with(".weight");
            (p.diffusers_key, (p.path, linear_weight))
        })
        .collect();
    let mut by_path: HashMap<String, String> = HashMap::new();
    let mut paths = Vec::with_capacity(planned.len());
    let mut transposed = Vec::with_capacity(planned.len());
    for tensor in &planned {
        let (path, linear_weight) = burn_paths
            .get(&tensor.target)
            .cloned()
            .unwrap_or_else(|| (tensor.target.clone(), false));
        transposed.push(linear_weight && tensor.shape.len() == 2);
        if let Some(previous) = by_path.insert(path.clone(), tensor.source_key.clone()) {
            return Err(StylusError::Model {
                path: file.path().to_path_buf(),
                message: format!(
                    "`{previous}` and `{}` both map to {component:?} parameter `{}`",
                    tensor.source_key, tensor.target
                ),
            });
        }
        paths.push(path);
    }

    let mut source_dtypes = BTreeMap::new();
    let snapshots: Vec<TensorSnapshot> = planned
        .iter()
        .zip(&paths)
        .zip(&transposed)
        .map(|((tensor, path), &transpose)| {
            if let Some(entry) = file.entries().get(&tensor.source_key) {
                *source_dtypes
                    .entry(format!("{:?}", entry.dtype))
                    .or_insert(0) += 1;
            }
            let file = file.clone();
            let key = tensor.source_key.clone();
            let shape = burn_shape(&tensor.shape, transpose);
            TensorSnapshot::from_closure(
                Rc::new(move || {
                    file.float_data(&key, dtype, &shape, transpose)
                        .map_err(|e| TensorSnapshotError::DataError(e.to_string()))
                }),
                dtype,
                Shape::from(burn_shape(&tensor.shape, transpose)),
                path.split('.').map(str::to_string).collect(),
                Vec::new(),
                ParamId::new(),
            )
        })
        .collect();

    let result = model.apply(snapshots, None, None, true);

    // A tensor that failed to decode (NaN, integer dtype, ...) gets its typed error back.
    for error in &result.errors {
        if let ApplyError::LoadError { path, .. } = error
            && let Some(index) = paths.iter().position(|p| p == path)
        {
            let tensor = &planned[index];
            let transpose = transposed[index];
            file.float_data(
                &tensor.source_key,
                dtype,
                &burn_shape(&tensor.shape, transpose),
                transpose,
            )?;
        }
    }
    let source_key = |path: &str| {
        by_path
            .get(path)
            .cloned()
            .unwrap_or_else(|| path.to_string())
    };
    check_apply_result(&result, component, file.path(), &source_key)?;
    file.check_unchanged()?;
    Ok(ComponentReport {
        component,
        file: file.path().to_path_buf(),
        loaded: result.applied.len(),
        ignored,
        source_dtypes,
    })
}

/// The shape a stored tensor has in burn: a transposed `Linear` weight swaps its two axes.
fn burn_shape(shape: &[usize], transpose: bool) -> Vec<usize> {
    if transpose {
        shape.iter().rev().copied().collect()
    } else {
        shape.to_vec()
    }
}
