//! [`LoraMerger`]: makes a weighted adapter set active on the UNet and the text encoder without
//! touching the base weights.
//!
//! The merger keeps the base modules and one or more merged sets (the last used is the active
//! one; [`LoraMerger::with_cache_budget`] keeps others, least recently used evicted first). A set
//! is a clone of the base (burn clones share tensor storage) in which only the parameters an
//! adapter touches are replaced, through a path-tracking [`ModuleMapper`]. A new set starts from
//! the active one and recomputes only the targets whose contributions (adapter, strength, order)
//! change, giving dropped targets their base tensor back, so a switch costs the weights that
//! change and the empty set restores the base bit for bit.
//!
//! A target touched only by plain LoRAs (the common case) is merged in one pass: the factors of
//! all its adapters are stacked into one rank-`sum r` product, one matmul computes the summed
//! change directly in the base weight's burn layout (`[in, out]` for a `Linear`, no transposes),
//! and one add writes the merged weight. Finiteness is proved from a bound (max |W| of the base,
//! read once per target and cached, plus a bound of the factors) instead of a pass over the
//! result. Other algorithms (LoHa, LoKr, full, IA3, DoRA, Tucker) take the general per-module
//! path of [`super::merge`] in f32 PyTorch layout. Results are cast to each parameter's dtype.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, ElementConversion as _, Int, Tensor};
use stylus_core::{AdapterMergeStats, MergeReport, Merger, ResolvedAdapter, Result, StylusError};

use super::adapter::{AdapterModule, LoraAdapter};
use super::delta::{fused_lora_delta, is_plain_lora};
use super::merge::{
    BaseTensors, ScaledAdapter, all_finite, merge_selected, modules_by_target, non_finite_merge,
};
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
    /// The contributions each touched target holds: a switch from this set recomputes only the
    /// targets whose contributions change.
    targets: BTreeMap<usize, Signature>,
}

#[derive(Debug)]
struct MergerState<B: Backend> {
    base: ActiveModels<B>,
    /// Merged sets, least recently used first; the last one is the active set. Never empty: the
    /// base (the empty set) starts as the active one.
    merged: Vec<MergedSet<B>>,
    /// Parsed adapters by path: switching masks re-merges, it does not re-read files.
    parsed: HashMap<PathBuf, Arc<LoraAdapter>>,
    /// max |W| of each base weight merged into so far (the finiteness bound, read once).
    base_max: HashMap<usize, f32>,
    /// Bytes (at f32) of each target's merged tensors, for the cache's accounting.
    target_bytes: HashMap<usize, usize>,
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

/// The adapters applied to one target, in order: (file, strength bits).
type Signature = Vec<(PathBuf, u32)>;

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
                    targets: BTreeMap::new(),
                }],
                base,
                parsed: HashMap::new(),
                base_max: HashMap::new(),
                target_bytes: HashMap::new(),
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
        let by_target = modules_by_target(&scaled)?;
        // The set switched from (cheap clones sharing storage: `state` changes while they are
        // read).
        let active_models = state.active().models.clone();
        let active_targets = state.active().targets.clone();

        // Only targets whose contributions differ from what `active` holds are touched: new or
        // changed ones are merged from the base, dropped ones get the base tensor back.
        let signatures: BTreeMap<usize, Signature> = by_target
            .iter()
            .map(|(target, modules)| {
                let signature = modules
                    .iter()
                    .map(|(s, m)| (s.adapter.path.clone(), s.strength(m.network).to_bits()))
                    .collect();
                (*target, signature)
            })
            .collect();
        let changed: BTreeSet<usize> = signatures
            .iter()
            .filter(|(target, signature)| active_targets.get(target) != Some(signature))
            .map(|(target, _)| *target)
            .chain(
                active_targets
                    .keys()
                    .filter(|target| !signatures.contains_key(target))
                    .copied(),
            )
            .collect();
        let mut reader = BaseReader::<B>::new(&self.table, &changed);
        state.base.unet.visit(&mut reader.visitor());
        state.base.text_encoder.visit(&mut reader.visitor());

        // Targets with anything but plain LoRAs (LoHa, LoKr, full, IA3, DoRA, Tucker) go through
        // the general per-module path, in f32 PyTorch layout.
        let fused = |target: usize| {
            by_target
                .get(&target)
                .is_some_and(|modules| modules.iter().all(|(_, m)| is_plain_lora(m)))
        };
        let general = merge_selected(
            &self.table,
            &scaled,
            |target| changed.contains(&target) && !fused(target),
            |target| reader.pytorch(&target.id),
            &self.device,
        )?;
        let mut replacements: HashMap<String, Replacement<B>> = HashMap::new();
        for merged in general {
            let id = &self.table.module(merged.target).id;
            let base = reader.raw(id)?;
            replacements.insert(
                id.clone(),
                Replacement {
                    weight: merged.weight,
                    pytorch_layout: true,
                    bias_changed: merged.bias.is_some(),
                    bias: merged.bias.or(base.bias),
                },
            );
        }
        for &index in &changed {
            let target = self.table.module(index);
            if replacements.contains_key(&target.id) {
                continue;
            }
            let base = reader.raw(&target.id)?;
            let Some(modules) = by_target.get(&index) else {
                replacements.insert(
                    target.id.clone(),
                    Replacement {
                        weight: base.weight,
                        pytorch_layout: false,
                        bias_changed: false,
                        bias: base.bias,
                    },
                );
                continue;
            };
            let strengths: Vec<(f32, &AdapterModule)> = modules
                .iter()
                .map(|(s, m)| (s.strength(m.network), *m))
                .collect();
            let (delta, bound) =
                fused_lora_delta::<B>(&strengths, target, base.linear, &self.device);
            let dtype = base.weight.dtype();
            let weight = base.weight.cast(DType::F32);
            let base_max = *state
                .base_max
                .entry(index)
                .or_insert_with(|| weight.clone().abs().max().into_scalar().elem::<f32>());
            // `delta` is the left operand: burn-flex adds in place into a uniquely owned lhs,
            // so the merged weight reuses the matmul's buffer instead of allocating another.
            let merged = delta + weight;
            // |W + D| <= max|W| + bound: when that is far from f32's range the result is
            // finite without reading it again; only a pathological base or adapter gets the
            // explicit check.
            let provably_finite = base_max + bound < f32::MAX / 2.0;
            if !provably_finite && !all_finite(merged.clone()) {
                return Err(non_finite_merge(modules, target));
            }
            replacements.insert(
                target.id.clone(),
                Replacement {
                    weight: merged.cast(dtype),
                    pytorch_layout: false,
                    bias_changed: false,
                    bias: base.bias,
                },
            );
        }

        let mut unet_writer = ParameterWriter::new(&self.table, &replacements, Network::Unet);
        let mut text_writer =
            ParameterWriter::new(&self.table, &replacements, Network::TextEncoder);
        let unet = active_models.unet.clone().map(&mut unet_writer);
        let text_encoder = active_models.text_encoder.clone().map(&mut text_writer);
        let written = unet_writer.written + text_writer.written;
        let expected =
            replacements.len() + replacements.values().filter(|r| r.bias.is_some()).count();
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
        for (id, replacement) in &replacements {
            if let Some(index) = self.table.by_id(id) {
                let bias = replacement
                    .bias
                    .as_ref()
                    .map_or(0, |b| b.shape().num_elements());
                let elements = replacement.weight.shape().num_elements() + bias;
                state
                    .target_bytes
                    .insert(index, elements * size_of::<f32>());
            }
        }
        // The set holds its own tensor for every target an adapter touches, merged now or
        // carried over from the set it was switched from.
        let bytes = signatures
            .keys()
            .map(|index| state.target_bytes.get(index).copied().unwrap_or(0))
            .sum();
        state.merged.retain(|m| m.set != adapters);
        state.merged.push(MergedSet {
            set: adapters.to_vec(),
            models: ActiveModels { text_encoder, unet },
            bytes,
            targets: signatures,
        });
        // Evict the least recently used sets (never the active one) down to the budget.
        let mut kept: usize = state.merged.iter().map(|m| m.bytes).sum::<usize>() - bytes;
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
            // Weights merged or restored, plus biases an adapter changed (restored biases are the
            // base's own tensors).
            touched_parameters: replacements.len()
                + replacements.values().filter(|r| r.bias_changed).count(),
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

/// A touched target's base tensors as the model holds them (its dtype), the weight as a matrix
/// in burn layout: `[in, out]` for a `Linear` (`linear`), `[out, in*kh*kw]` for a convolution.
#[derive(Debug, Clone)]
struct RawBase<B: Backend> {
    weight: Tensor<B, 2>,
    linear: bool,
    bias: Option<Tensor<B, 1>>,
}

/// A visited target's (weight matrix, is `Linear`) and bias.
type BaseSlot<B> = (Option<(Tensor<B, 2>, bool)>, Option<Tensor<B, 1>>);

/// Collects the base tensors of the targets a merge changes (handles sharing the base storage).
struct BaseReader<B: Backend> {
    /// Module id -> (weight, linear, bias) once visited.
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

    fn raw(&self, id: &str) -> Result<RawBase<B>> {
        match self.wanted.get(id) {
            Some((Some((weight, linear)), bias)) => Ok(RawBase {
                weight: weight.clone(),
                linear: *linear,
                bias: bias.clone(),
            }),
            _ => Err(StylusError::Model {
                path: PathBuf::new(),
                message: format!("module `{id}` has no weight in the model"),
            }),
        }
    }

    /// The base in f32 PyTorch layout (`[out, in*kh*kw]`), for the general merge path.
    fn pytorch(&self, id: &str) -> Result<BaseTensors<B>> {
        let raw = self.raw(id)?;
        let weight = raw.weight.cast(DType::F32);
        let weight = if raw.linear {
            weight.transpose()
        } else {
            weight
        };
        Ok((weight, raw.bias.map(|b| b.cast(DType::F32))))
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
        let value = param.val();
        let dims = value.dims();
        match field.as_str() {
            // 2-D weights are `Linear` ([in, out] in burn), 4-D ones convolutions.
            "weight" => {
                let rest = dims[1..].iter().product::<usize>();
                slot.0 = Some((value.reshape([dims[0], rest]), D == 2));
            }
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

/// The new value of one changed target.
#[derive(Debug, Clone)]
struct Replacement<B: Backend> {
    /// `[out, in*kh*kw]` f32 when `pytorch_layout`, else burn layout in the parameter's dtype.
    weight: Tensor<B, 2>,
    pytorch_layout: bool,
    /// The bias to hold (the base one unless an adapter changed it).
    bias: Option<Tensor<B, 1>>,
    /// Whether an adapter changed the bias.
    bias_changed: bool,
}

/// Writes the replacements of one network into a clone of the active models.
struct ParameterWriter<'a, B: Backend> {
    path: Vec<String>,
    /// Module id -> replacement.
    replacements: HashMap<&'a str, &'a Replacement<B>>,
    written: usize,
}

impl<'a, B: Backend> ParameterWriter<'a, B> {
    fn new(
        table: &TargetTable,
        replacements: &'a HashMap<String, Replacement<B>>,
        network: Network,
    ) -> Self {
        let replacements = replacements
            .iter()
            .filter(|(id, _)| {
                table
                    .by_id(id)
                    .is_some_and(|index| table.module(index).network == network)
            })
            .map(|(id, replacement)| (id.as_str(), replacement))
            .collect();
        Self {
            path: Vec::new(),
            replacements,
            written: 0,
        }
    }
}

impl<B: Backend> ModuleMapper<B> for ParameterWriter<'_, B> {
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
        let Some(&target) = self.replacements.get(module.join(".").as_str()) else {
            return param;
        };
        let replacement: Option<Tensor<B, 2>> = match field.as_str() {
            // burn's Linear weight is [in, out].
            "weight" if D == 2 && target.pytorch_layout => Some(target.weight.clone().transpose()),
            "weight" => Some(target.weight.clone()),
            "bias" => target.bias.clone().map(|b| {
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
