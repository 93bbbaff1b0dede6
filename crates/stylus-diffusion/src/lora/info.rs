//! `stylus info`: what an adapter or checkpoint file is — format, base model, modules per kind,
//! ranks and alphas, metadata highlights, content hash; for checkpoints the layout, dtypes and
//! parameter counts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use stylus_core::Result;

use super::base_model::guess_base_model;
use super::file::TensorFile;
use super::parse::{ParseOptions, parse_adapter};
use super::targets::{Network, TargetTable};
use crate::checkpoint::diffusers::weight_file;

/// Metadata keys worth showing (kohya `ss_*`, SAI ModelSpec).
const HIGHLIGHTS: &[&str] = &[
    "ss_output_name",
    "ss_network_module",
    "ss_network_dim",
    "ss_network_alpha",
    "ss_network_args",
    "ss_base_model_version",
    "ss_v2",
    "ss_sd_model_name",
    "ss_training_comment",
    "ss_clip_skip",
    "ss_resolution",
    "ss_num_train_images",
    "ss_epoch",
    "ss_steps",
    "modelspec.title",
    "modelspec.architecture",
    "modelspec.trigger_phrase",
    "modelspec.resolution",
];

/// Description of an adapter file.
#[derive(Debug, Clone, Serialize)]
pub struct AdapterInfo {
    /// The file.
    pub path: PathBuf,
    /// Detected format, when the file parses for SD 1.x.
    pub format: Option<String>,
    /// Why it does not load on SD 1.x, when it does not.
    pub error: Option<String>,
    /// `sd1`, `sd2`, `sdxl`, `dit (Flux/SD3)` or `unknown`.
    pub base_model: String,
    /// What decided the base model.
    pub base_model_evidence: String,
    /// Tensors in the file.
    pub tensors: usize,
    /// Matched modules per network (`unet`, `text_encoder`).
    pub modules: BTreeMap<String, usize>,
    /// Matched modules per algorithm (`lora`, `loha`, `lokr`, `full`, `ia3`).
    pub modules_per_kind: BTreeMap<String, usize>,
    /// Modules with DoRA magnitudes.
    pub dora_modules: usize,
    /// Rank -> modules.
    pub ranks: BTreeMap<usize, usize>,
    /// Alpha (as text) -> modules; `rank` for modules without alpha.
    pub alphas: BTreeMap<String, usize>,
    /// Module names that match nothing in SD 1.5.
    pub unmatched_modules: Vec<String>,
    /// Highlights of the safetensors metadata.
    pub metadata: BTreeMap<String, String>,
    /// The most frequent training tags (`ss_tag_frequency`), most frequent first.
    pub top_tags: Vec<(String, u64)>,
    /// sha256 of the tensor data (kohya `sshs_model_hash`).
    pub content_hash: String,
    /// Whether the file's own `sshs_model_hash` agrees, when it has one.
    pub content_hash_matches_metadata: Option<bool>,
}

/// Description of a checkpoint (diffusers folder or single file).
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointInfo {
    /// The folder or file.
    pub path: PathBuf,
    /// `diffusers folder` or `single file`.
    pub layout: String,
    /// Parameters per component (`unet`, `text_encoder`, `vae`, `other`).
    pub parameters: BTreeMap<String, u64>,
    /// Tensors per dtype.
    pub dtypes: BTreeMap<String, usize>,
    /// sha256 of the tensor data per weight file.
    pub content_hashes: BTreeMap<String, String>,
}

/// What `stylus info` prints.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FileInfo {
    /// A LoRA / LyCORIS / PEFT adapter.
    Adapter(Box<AdapterInfo>),
    /// An SD checkpoint.
    Checkpoint(CheckpointInfo),
}

/// Describes the adapter or checkpoint at `path`.
pub fn describe(path: &Path) -> Result<FileInfo> {
    if path.is_dir() {
        return describe_diffusers(path).map(FileInfo::Checkpoint);
    }
    let file = TensorFile::open(path)?;
    if file
        .tensors()
        .keys()
        .any(|k| k.starts_with("model.diffusion_model."))
    {
        return Ok(FileInfo::Checkpoint(describe_single_file(&file)));
    }
    Ok(FileInfo::Adapter(Box::new(describe_adapter(&file))))
}

fn describe_adapter(file: &TensorFile) -> AdapterInfo {
    let guess = guess_base_model(file);
    let metadata: BTreeMap<String, String> = HIGHLIGHTS
        .iter()
        .filter_map(|k| {
            file.metadata()
                .get(*k)
                .map(|v| ((*k).to_string(), v.clone()))
        })
        .collect();
    let content_hash = file.content_hash();
    let mut info = AdapterInfo {
        path: file.path().to_path_buf(),
        format: None,
        error: None,
        base_model: guess.family.to_string(),
        base_model_evidence: guess.evidence,
        tensors: file.tensors().len(),
        modules: BTreeMap::new(),
        modules_per_kind: BTreeMap::new(),
        dora_modules: 0,
        ranks: BTreeMap::new(),
        alphas: BTreeMap::new(),
        unmatched_modules: Vec::new(),
        metadata,
        top_tags: top_tags(file.metadata().get("ss_tag_frequency"), 10),
        content_hash_matches_metadata: file
            .metadata()
            .get("sshs_model_hash")
            .map(|h| *h == content_hash),
        content_hash,
    };
    match parse_adapter(file, &TargetTable::sd15(), ParseOptions::default()) {
        Ok(adapter) => {
            info.format = Some(adapter.format.clone());
            for (network, name) in [
                (Network::Unet, "unet"),
                (Network::TextEncoder, "text_encoder"),
            ] {
                info.modules
                    .insert(name.to_string(), adapter.count(network));
            }
            for module in &adapter.modules {
                *info
                    .modules_per_kind
                    .entry(module.kind.algorithm().to_string())
                    .or_default() += 1;
                info.dora_modules += usize::from(module.dora.is_some());
                if let Some(rank) = module.rank {
                    *info.ranks.entry(rank).or_default() += 1;
                }
                let alpha = module
                    .alpha
                    .map_or_else(|| "rank".to_string(), |a| format!("{a}"));
                *info.alphas.entry(alpha).or_default() += 1;
            }
            info.unmatched_modules = adapter.unmatched;
        }
        Err(error) => info.error = Some(error.to_string()),
    }
    info
}

/// The `n` most frequent tags of kohya's `ss_tag_frequency` (`{"dir": {"tag": count}}`).
fn top_tags(raw: Option<&String>, n: usize) -> Vec<(String, u64)> {
    let Some(json) = raw.and_then(|r| serde_json::from_str::<serde_json::Value>(r).ok()) else {
        return Vec::new();
    };
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for tags in json.as_object().into_iter().flat_map(|o| o.values()) {
        for (tag, count) in tags.as_object().into_iter().flatten() {
            *counts.entry(tag.trim().to_string()).or_default() += count.as_u64().unwrap_or(0);
        }
    }
    let mut sorted: Vec<(String, u64)> = counts.into_iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    sorted.truncate(n);
    sorted
}

fn count_tensors(
    file: &TensorFile,
    component: impl Fn(&str) -> &'static str,
    info: &mut CheckpointInfo,
) {
    for (key, tensor) in file.tensors() {
        *info
            .parameters
            .entry(component(key).to_string())
            .or_default() += tensor.numel() as u64;
        *info
            .dtypes
            .entry(format!("{:?}", tensor.dtype))
            .or_default() += 1;
    }
    info.content_hashes
        .insert(file.path().display().to_string(), file.content_hash());
}

fn describe_single_file(file: &TensorFile) -> CheckpointInfo {
    let mut info = CheckpointInfo {
        path: file.path().to_path_buf(),
        layout: "single file".into(),
        parameters: BTreeMap::new(),
        dtypes: BTreeMap::new(),
        content_hashes: BTreeMap::new(),
    };
    let component = |key: &str| {
        if key.starts_with("model.diffusion_model.") {
            "unet"
        } else if key.starts_with("cond_stage_model.") {
            "text_encoder"
        } else if key.starts_with("first_stage_model.") {
            "vae"
        } else {
            "other"
        }
    };
    count_tensors(file, component, &mut info);
    info
}

fn describe_diffusers(folder: &Path) -> Result<CheckpointInfo> {
    let mut info = CheckpointInfo {
        path: folder.to_path_buf(),
        layout: "diffusers folder".into(),
        parameters: BTreeMap::new(),
        dtypes: BTreeMap::new(),
        content_hashes: BTreeMap::new(),
    };
    for (name, dir, stem) in [
        ("unet", "unet", "diffusion_pytorch_model"),
        ("text_encoder", "text_encoder", "model"),
        ("vae", "vae", "diffusion_pytorch_model"),
    ] {
        let file = TensorFile::open(&weight_file(&folder.join(dir), stem)?)?;
        count_tensors(&file, |_| name, &mut info);
    }
    Ok(info)
}
