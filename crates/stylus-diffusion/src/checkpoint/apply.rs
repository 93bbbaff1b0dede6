//! Putting file tensors into a model: each tensor becomes a lazily-decoded burn-store
//! [`TensorSnapshot`] under its diffusers name, and [`ModuleSnapshot::apply`] with
//! [`PyTorchToBurnAdapter`] (Linear transposition, `weight/bias` -> `gamma/beta` for norms)
//! writes them into the parameters, converted to the requested dtype.
//!
//! burn-store's own `SafetensorsStore` is not used because single-file checkpoints need the
//! index-dependent LDM name mapping, 1x1-conv squeezing and per-tensor typed errors; the reader in
//! [`super::safetensors_file`] provides those and hands burn-store the same snapshots.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use burn::module::{Module, ParamId};
use burn::store::{
    ApplyError, ModuleSnapshot, PyTorchToBurnAdapter, TensorSnapshot, TensorSnapshotError,
};
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
    let burn_paths: HashMap<String, String> = parameters::<B, M>(model)
        .into_iter()
        .map(|p| (p.diffusers_key, p.path))
        .collect();
    let mut by_path: HashMap<String, String> = HashMap::new();
    let mut paths = Vec::with_capacity(planned.len());
    for tensor in &planned {
        let path = burn_paths
            .get(&tensor.target)
            .cloned()
            .unwrap_or_else(|| tensor.target.clone());
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
        .map(|(tensor, path)| {
            if let Some(entry) = file.entries().get(&tensor.source_key) {
                *source_dtypes
                    .entry(format!("{:?}", entry.dtype))
                    .or_insert(0) += 1;
            }
            let file = file.clone();
            let key = tensor.source_key.clone();
            let shape = tensor.shape.clone();
            TensorSnapshot::from_closure(
                Rc::new(move || {
                    file.float_data(&key, dtype, &shape)
                        .map_err(|e| TensorSnapshotError::DataError(e.to_string()))
                }),
                dtype,
                Shape::from(tensor.shape.clone()),
                path.split('.').map(str::to_string).collect(),
                Vec::new(),
                ParamId::new(),
            )
        })
        .collect();

    let result = model.apply(snapshots, None, Some(Box::new(PyTorchToBurnAdapter)), true);

    // A tensor that failed to decode (NaN, integer dtype, ...) gets its typed error back.
    for error in &result.errors {
        if let ApplyError::LoadError { path, .. } = error
            && let Some(index) = paths.iter().position(|p| p == path)
        {
            let tensor = &planned[index];
            file.float_data(&tensor.source_key, dtype, &tensor.shape)?;
        }
    }
    let source_key = |path: &str| {
        by_path
            .get(path)
            .cloned()
            .unwrap_or_else(|| path.to_string())
    };
    check_apply_result(&result, component, file.path(), &source_key)?;
    Ok(ComponentReport {
        component,
        file: file.path().to_path_buf(),
        loaded: result.applied.len(),
        ignored,
        source_dtypes,
    })
}
