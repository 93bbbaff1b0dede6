//! [`LoraMerger`]: makes a weighted adapter set active on the UNet and the text encoder without
//! touching the base weights.
//!
//! The merger keeps the base modules and, for each set, builds the active modules as a clone of
//! the base (burn clones share tensor storage) in which only the parameters an adapter touches
//! are replaced, through a path-tracking [`ModuleMapper`]. Switching sets therefore costs the
//! touched weights only, and the empty set gives back the base itself, bit for bit. Math runs in
//! f32 ([`super::merge`]); results are cast to each parameter's dtype. burn's `Linear` stores
//! `[in, out]`, the transpose of PyTorch's layout, which is handled at the boundary.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, Int, Tensor};
use stylus_core::{AdapterMergeStats, MergeReport, Merger, ResolvedAdapter, Result, StylusError};

use super::adapter::LoraAdapter;
use super::merge::{BaseTensors, MergedWeight, ScaledAdapter, merge_targets};
use super::parse::{ParseOptions, load_adapter};
use super::targets::{Network, TargetTable};
use crate::models::clip::ClipTextModel;
use crate::models::unet::{UNet2DConditionModel, UNetConfig};

/// An adapter file with its strengths.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterStrength {
    /// The adapter file.
    pub path: PathBuf,
    /// Multiplier of its UNet modules.
    pub unet: f32,
    /// Multiplier of its text-encoder modules.
    pub text_encoder: f32,
}

/// The models with the current adapter set merged in.
#[derive(Debug, Clone)]
pub struct ActiveModels<B: Backend> {
    /// The text encoder.
    pub text_encoder: ClipTextModel<B>,
    /// The UNet.
    pub unet: UNet2DConditionModel<B>,
}

/// One merged adapter set kept for reuse.
#[derive(Debug)]
struct MergedSet<B: Backend> {
    set: Vec<AdapterStrength>,
    models: ActiveModels<B>,
    /// Bytes of the parameters the merge replaced (at f32); the rest shares the base's storage.
    bytes: usize,
}

#[derive(Debug)]
struct MergerState<B: Backend> {
    base: ActiveModels<B>,
    /// Merged sets, least recently used first; the last one is the active set. Never empty: the
    /// base (the empty set) starts as the active one.
    merged: Vec<MergedSet<B>>,
    /// Parsed adapters by path: switching masks re-merges, it does not re-read files.
    parsed: HashMap<PathBuf, Arc<LoraAdapter>>,
}

/// What the merged-set cache did since the merger was made (for a server's metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MergeCacheStats {
    /// Merges computed (cache misses of [`LoraMerger::models_for`], and every [`LoraMerger::merge`]).
    pub merges: u64,
    /// Jobs whose adapter set was already merged.
    pub hits: u64,
    /// Merged sets held now (the active one included).
    pub sets: usize,
    /// Bytes they hold beyond the base.
    pub bytes: usize,
}

/// Merges weighted LoRA sets into a copy of a base UNet + text encoder (see the module docs).
#[derive(Debug)]
pub struct LoraMerger<B: Backend> {
    table: TargetTable,
    device: B::Device,
    options: ParseOptions,
    /// Bytes of merged sets kept beyond the active one (0: only the active set is kept).
    cache_budget: usize,
    state: Mutex<MergerState<B>>,
    merges: std::sync::atomic::AtomicU64,
    hits: std::sync::atomic::AtomicU64,
}

impl<B: Backend> LoraMerger<B> {
    /// A merger over these base models (`unet_config` is the UNet's config, for the LDM names).
    pub fn new(
        unet: UNet2DConditionModel<B>,
        unet_config: &UNetConfig,
        text_encoder: ClipTextModel<B>,
        device: &B::Device,
    ) -> Self {
        let table = TargetTable::from_models(&unet, unet_config, &text_encoder);
        // A lazily initialized parameter's clone initializes on its own (burn `Param::clone`),
        // so the active models could drift from the base; materialize everything once (a no-op
        // for loaded checkpoints).
        unet.visit(&mut Materialize);
        text_encoder.visit(&mut Materialize);
        let base = ActiveModels { text_encoder, unet };
        Self {
            table,
            device: device.clone(),
            options: ParseOptions::default(),
            cache_budget: 0,
            state: Mutex::new(MergerState {
                merged: vec![MergedSet {
                    set: Vec::new(),
                    models: base.clone(),
                    bytes: 0,
                }],
                base,
                parsed: HashMap::new(),
            }),
            merges: Default::default(),
            hits: Default::default(),
        }
    }

    /// Keeps merged adapter sets besides the active one, least recently used evicted first,
    /// while the bytes their merged parameters hold stay within `bytes` (a server that sees the
    /// same few sets again and again then merges each once).
    pub fn with_cache_budget(mut self, bytes: usize) -> Self {
        self.cache_budget = bytes;
        self
    }

    /// Merges, cache hits and what the cache holds.
    pub fn cache_stats(&self) -> MergeCacheStats {
        use std::sync::atomic::Ordering::Relaxed;
        let state = self.lock();
        MergeCacheStats {
            merges: self.merges.load(Relaxed),
            hits: self.hits.load(Relaxed),
            sets: state.merged.len(),
            bytes: state.merged.iter().map(|m| m.bytes).sum(),
        }
    }

    /// Refuse adapters with unmatched modules or unknown keys (default: warn and report them).
    pub fn strict(mut self, strict: bool) -> Self {
        self.options.strict = strict;
        self
    }

    /// The targets of the base models.
    pub fn table(&self) -> &TargetTable {
        &self.table
    }

    /// The models with the current adapter set (cheap clones sharing storage).
    pub fn active(&self) -> ActiveModels<B> {
        self.lock().active().models.clone()
    }

    /// The base models (cheap clones sharing storage).
    pub fn base(&self) -> ActiveModels<B> {
        self.lock().base.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MergerState<B>> {
        // A panic while holding the lock cannot leave half-merged models: `active` is replaced
        // in one assignment after the merge succeeded.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn parsed(&self, state: &mut MergerState<B>, path: &Path) -> Result<Arc<LoraAdapter>> {
        if let Some(adapter) = state.parsed.get(path) {
            return Ok(adapter.clone());
        }
        let adapter = Arc::new(load_adapter(path, &self.table, self.options)?);
        state.parsed.insert(path.to_path_buf(), adapter.clone());
        Ok(adapter)
    }

    /// The models with `adapters` merged in, for one render job: the caller owns them (cheap
    /// clones sharing storage with the base), so a later merge for another job cannot change
    /// what this job renders with. The set also becomes the active one (the last set is reused
    /// without merging when the next job asks for it again).
    pub fn models_for(&self, adapters: &[AdapterStrength]) -> Result<ActiveModels<B>> {
        let mut state = self.lock();
        if let Some(index) = state.merged.iter().position(|m| m.set == adapters) {
            self.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let hit = state.merged.remove(index);
            state.merged.push(hit);
        } else {
            self.merge_locked(&mut state, adapters)?;
        }
        Ok(state.active().models.clone())
    }

    /// Makes `adapters` the active set, replacing the previous one. On error the previous set
    /// stays active.
    pub fn merge(&self, adapters: &[AdapterStrength]) -> Result<MergeReport> {
        let mut state = self.lock();
        self.merge_locked(&mut state, adapters)
    }

    fn merge_locked(
        &self,
        state: &mut MergerState<B>,
        adapters: &[AdapterStrength],
    ) -> Result<MergeReport> {
        let started = Instant::now();
        let parsed: Vec<Arc<LoraAdapter>> = adapters
            .iter()
            .map(|a| self.parsed(state, &a.path))
            .collect::<Result<_>>()?;
        let scaled: Vec<ScaledAdapter<'_>> = parsed
            .iter()
            .zip(adapters)
            .map(|(adapter, strength)| ScaledAdapter {
                adapter,
                unet: strength.unet,
                text_encoder: strength.text_encoder,
            })
            .collect();

        // Read the base tensors of the touched targets, then merge them.
        let touched: BTreeSet<usize> = scaled
            .iter()
            .flat_map(|s| {
                s.adapter.modules.iter().filter(move |m| match m.network {
                    Network::Unet => s.unet != 0.0,
                    Network::TextEncoder => s.text_encoder != 0.0,
                })
            })
            .map(|m| m.target)
            .collect();
        let mut reader = BaseReader::<B>::new(&self.table, &touched);
        state.base.unet.visit(&mut reader.visitor());
        state.base.text_encoder.visit(&mut reader.visitor());
        let merged = merge_targets(
            &self.table,
            &scaled,
            |target| reader.take(&target.id),
            &self.device,
        )?;

        let mut unet_writer = ParameterWriter::new(&self.table, &merged, Network::Unet);
        let mut text_writer = ParameterWriter::new(&self.table, &merged, Network::TextEncoder);
        let unet = state.base.unet.clone().map(&mut unet_writer);
        let text_encoder = state.base.text_encoder.clone().map(&mut text_writer);
        let written = unet_writer.written + text_writer.written;
        let expected = merged.len() + merged.iter().filter(|m| m.bias.is_some()).count();
        if written != expected {
            return Err(StylusError::Model {
                path: adapters.first().map(|a| a.path.clone()).unwrap_or_default(),
                message: format!(
                    "internal: merged {expected} tensors but wrote {written} into the model"
                ),
            });
        }
        self.merges
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let bytes = merged
            .iter()
            .map(|m| {
                let bias = m.bias.as_ref().map_or(0, |b| b.shape().num_elements());
                (m.weight.shape().num_elements() + bias) * size_of::<f32>()
            })
            .sum();
        state.merged.retain(|m| m.set != adapters);
        state.merged.push(MergedSet {
            set: adapters.to_vec(),
            models: ActiveModels { text_encoder, unet },
            bytes,
        });
        // Evict the least recently used sets (never the active one) down to the budget.
        let active_bytes = bytes;
        let mut kept: usize = state.merged.iter().map(|m| m.bytes).sum::<usize>() - active_bytes;
        while kept > self.cache_budget && state.merged.len() > 1 {
            kept -= state.merged.remove(0).bytes;
        }

        Ok(MergeReport {
            adapters: parsed
                .iter()
                .map(|adapter| AdapterMergeStats {
                    path: adapter.path.clone(),
                    format: adapter.format.clone(),
                    matched_modules: adapter.modules.len(),
                    unmatched_modules: adapter.unmatched.clone(),
                })
                .collect(),
            touched_parameters: written,
            millis: started.elapsed().as_secs_f64() * 1000.0,
        })
    }
}

impl<B: Backend> MergerState<B> {
    fn active(&self) -> &MergedSet<B> {
        self.merged
            .last()
            .expect("the merged sets always hold the active one")
    }
}

impl<B: Backend> Merger for LoraMerger<B> {
    /// Each adapter's weight is its strength on both the UNet and the text encoder.
    fn set_adapters(&self, adapters: &[ResolvedAdapter]) -> Result<MergeReport> {
        self.merge(&strengths(adapters))
    }
}

/// Resolved adapters as strengths: each adapter's weight on both the UNet and the text encoder.
pub fn strengths(adapters: &[ResolvedAdapter]) -> Vec<AdapterStrength> {
    adapters
        .iter()
        .map(|a| AdapterStrength {
            path: a.path.clone(),
            unet: a.adapter.weight,
            text_encoder: a.adapter.weight,
        })
        .collect()
}

/// Forces lazy parameters to their values.
struct Materialize;

impl<B: Backend> ModuleVisitor<B> for Materialize {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        param.val();
    }
}

/// A touched target's base weight `[out, in*kh*kw]` and bias, once read.
type BaseSlot<B> = (Option<Tensor<B, 2>>, Option<Tensor<B, 1>>);

/// Collects, in f32 PyTorch layout, the base weights and biases of the touched targets.
struct BaseReader<B: Backend> {
    /// Module id -> base tensors.
    wanted: HashMap<String, BaseSlot<B>>,
}

impl<B: Backend> BaseReader<B> {
    fn new(table: &TargetTable, touched: &BTreeSet<usize>) -> Self {
        let wanted = touched
            .iter()
            .map(|index| (table.module(*index).id.clone(), (None, None)))
            .collect();
        Self { wanted }
    }

    fn visitor(&mut self) -> PathVisitor<'_, B> {
        PathVisitor {
            path: Vec::new(),
            reader: self,
        }
    }

    fn take(&mut self, id: &str) -> Result<BaseTensors<B>> {
        match self.wanted.remove(id) {
            Some((Some(weight), bias)) => Ok((weight, bias)),
            _ => Err(StylusError::Model {
                path: PathBuf::new(),
                message: format!("module `{id}` has no weight in the model"),
            }),
        }
    }
}

/// Walks a module tree, tracking the parameter path.
struct PathVisitor<'a, B: Backend> {
    path: Vec<String>,
    reader: &'a mut BaseReader<B>,
}

impl<B: Backend> ModuleVisitor<B> for PathVisitor<'_, B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some((field, module)) = self.path.split_last() else {
            return;
        };
        let id = module.join(".");
        let Some(slot) = self.reader.wanted.get_mut(&id) else {
            return;
        };
        let value = param.val().cast(DType::F32);
        match field.as_str() {
            "weight" => slot.0 = Some(to_pytorch_matrix(value)),
            "bias" => {
                let count = value.shape().num_elements();
                slot.1 = Some(value.reshape([count]));
            }
            _ => {}
        }
    }

    fn visit_int<const D: usize>(&mut self, _param: &Param<Tensor<B, D, Int>>) {}

    fn visit_bool<const D: usize>(&mut self, _param: &Param<Tensor<B, D, Bool>>) {}
}

/// A burn weight as the PyTorch-layout matrix `[out, in*kh*kw]`: 2-D weights are `Linear`
/// (`[in, out]` in burn), 4-D ones convolutions (`[out, in, kh, kw]` as in PyTorch).
fn to_pytorch_matrix<B: Backend, const D: usize>(weight: Tensor<B, D>) -> Tensor<B, 2> {
    let dims = weight.dims();
    if D == 2 {
        weight.reshape([dims[0], dims[1]]).transpose()
    } else {
        let rest = dims[1..].iter().product::<usize>();
        weight.reshape([dims[0], rest])
    }
}

/// Replaces the touched parameters of one network with their merged values.
struct ParameterWriter<B: Backend> {
    path: Vec<String>,
    /// Module id -> merged (weight, bias), f32 PyTorch layout.
    merged: HashMap<String, (Tensor<B, 2>, Option<Tensor<B, 1>>)>,
    written: usize,
}

impl<B: Backend> ParameterWriter<B> {
    fn new(table: &TargetTable, merged: &[MergedWeight<B>], network: Network) -> Self {
        let merged = merged
            .iter()
            .filter(|m| table.module(m.target).network == network)
            .map(|m| {
                (
                    table.module(m.target).id.clone(),
                    (m.weight.clone(), m.bias.clone()),
                )
            })
            .collect();
        Self {
            path: Vec::new(),
            merged,
            written: 0,
        }
    }
}

impl<B: Backend> ModuleMapper<B> for ParameterWriter<B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let Some((field, module)) = self.path.split_last() else {
            return param;
        };
        let Some((weight, bias)) = self.merged.get(&module.join(".")) else {
            return param;
        };
        let replacement: Option<Tensor<B, 2>> = match field.as_str() {
            // burn's Linear weight is [in, out].
            "weight" if D == 2 => Some(weight.clone().transpose()),
            "weight" => Some(weight.clone()),
            "bias" => bias.clone().map(|b| {
                let count = b.dims()[0];
                b.reshape([1, count])
            }),
            _ => None,
        };
        let Some(replacement) = replacement else {
            return param;
        };
        self.written += 1;
        param.map(|old| {
            let dtype = old.dtype();
            replacement.reshape(old.shape()).cast(dtype)
        })
    }

    fn map_int<const D: usize>(
        &mut self,
        param: Param<Tensor<B, D, Int>>,
    ) -> Param<Tensor<B, D, Int>> {
        param
    }

    fn map_bool<const D: usize>(
        &mut self,
        param: Param<Tensor<B, D, Bool>>,
    ) -> Param<Tensor<B, D, Bool>> {
        param
    }
}
