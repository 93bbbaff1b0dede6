//! Baking weighted LoRAs into a checkpoint on disk (`stylus merge`), like kohya's
//! `merge_lora.py`: tensors are read and written by name straight from the safetensors files,
//! without building the networks. The output keeps the base's layout (a diffusers folder with the
//! same file names, or one single-file `.safetensors`), its metadata and every tensor's dtype;
//! only the touched weights change, merged in f32 and cast back once.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::{Tensor, TensorData};
use safetensors::Dtype;
use safetensors::tensor::View;
use stylus_core::{AdapterMergeStats, Result, StylusError};

use super::adapter::LoraAdapter;
use super::file::{TensorFile, encode_floats};
use super::merge::{BaseTensors, ScaledAdapter, merge_targets};
use super::merger::AdapterStrength;
use super::parse::{ParseOptions, load_adapter};
use super::targets::{Network, TargetTable};
use crate::backend::{CpuBackend, cpu_device};
use crate::checkpoint::Component;
use crate::checkpoint::diffusers::{read_clip_config, weight_file};
use crate::checkpoint::infer::{self, Shapes};
use crate::checkpoint::mapping::{
    KeyFate, LDM_UNET_PREFIX, LdmUNetLayout, diffusers_key_fate, ldm_key_fate,
};
use crate::models::unet::UNetConfig;

/// What `stylus merge` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckpointMergeReport {
    /// `diffusers folder` or `single file`.
    pub layout: &'static str,
    /// Per adapter: format, matched and unmatched modules.
    pub adapters: Vec<AdapterMergeStats>,
    /// Weight and bias tensors that changed.
    pub merged_tensors: usize,
    /// The files written.
    pub files_written: Vec<PathBuf>,
    /// Wall time.
    pub millis: f64,
}

/// One weight file of the base and where our parameter names live in it.
struct WeightFile {
    file: TensorFile,
    /// diffusers parameter name (`text_model.encoder.layers.0.mlp.fc1.weight`) -> file key.
    keys: HashMap<String, String>,
}

/// A base checkpoint opened for merging.
struct BaseCheckpoint {
    layout: &'static str,
    table: TargetTable,
    /// One file for a single-file checkpoint; UNet then text encoder for a diffusers folder.
    files: Vec<WeightFile>,
}

impl BaseCheckpoint {
    fn open(path: &Path) -> Result<Self> {
        if path.is_dir() {
            Self::open_diffusers(path)
        } else {
            Self::open_single_file(path)
        }
    }

    fn open_diffusers(folder: &Path) -> Result<Self> {
        let unet_config = UNetConfig::from_diffusers_json(&folder.join("unet/config.json"))?;
        let text_config = read_clip_config(&folder.join("text_encoder/config.json"))?;
        let mut files = Vec::new();
        for (component, dir, stem) in [
            (Component::Unet, "unet", "diffusion_pytorch_model"),
            (Component::TextEncoder, "text_encoder", "model"),
        ] {
            let file = TensorFile::open(&weight_file(&folder.join(dir), stem)?)?;
            let keys = file
                .tensors()
                .keys()
                .filter_map(|key| match diffusers_key_fate(component, key) {
                    KeyFate::Load(mapped) => Some((mapped.name, key.clone())),
                    _ => None,
                })
                .collect();
            files.push(WeightFile { file, keys });
        }
        Ok(Self {
            layout: "diffusers folder",
            table: TargetTable::from_configs(&unet_config, &text_config),
            files,
        })
    }

    fn open_single_file(path: &Path) -> Result<Self> {
        let file = TensorFile::open(path)?;
        let unet_keys: Vec<&str> = file
            .tensors()
            .keys()
            .filter_map(|k| k.strip_prefix(LDM_UNET_PREFIX))
            .collect();
        let layout = LdmUNetLayout::infer(unet_keys.iter().copied()).ok_or_else(|| StylusError::Model {
            path: path.to_path_buf(),
            message: "not a single-file SD 1.x checkpoint: no `model.diffusion_model.input_blocks.*` UNet keys".into(),
        })?;
        let mut keys = HashMap::new();
        let mut unet_shapes = Shapes::new();
        let mut text_shapes = Shapes::new();
        for (key, info) in file.tensors() {
            // The VAE level count does not matter for UNet and text-encoder keys.
            if let KeyFate::Load(mapped) = ldm_key_fate(key, &layout, 4) {
                match mapped.component {
                    Component::Unet => unet_shapes.insert(mapped.name.clone(), info.shape.clone()),
                    Component::TextEncoder => {
                        text_shapes.insert(mapped.name.clone(), info.shape.clone())
                    }
                    Component::Vae => continue,
                };
                keys.insert(mapped.name, key.clone());
            }
        }
        let unet_config = infer::unet_config(&unet_shapes, path)?;
        let text_config = infer::clip_config(&text_shapes, path)?;
        Ok(Self {
            layout: "single file",
            table: TargetTable::from_configs(&unet_config, &text_config),
            files: vec![WeightFile { file, keys }],
        })
    }

    /// The file and key holding parameter `name` of `network`.
    fn locate(&self, network: Network, name: &str) -> Option<(usize, &str)> {
        let candidates: Vec<usize> = match (self.files.len(), network) {
            (1, _) => vec![0],
            (_, Network::Unet) => vec![0],
            (_, Network::TextEncoder) => vec![1],
        };
        candidates.into_iter().find_map(|index| {
            self.files[index]
                .keys
                .get(name)
                .map(|key| (index, key.as_str()))
        })
    }
}

/// A tensor to write: the base's bytes, or new bytes in the same dtype.
struct OutputTensor<'a> {
    dtype: Dtype,
    shape: &'a [usize],
    bytes: Cow<'a, [u8]>,
}

impl View for &OutputTensor<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Merges `adapters` into the checkpoint at `base` and writes the result to `out` in the same
/// layout. `out` must not be `base`.
pub fn merge_into_checkpoint(
    base: &Path,
    adapters: &[AdapterStrength],
    out: &Path,
) -> Result<CheckpointMergeReport> {
    let started = Instant::now();
    if out.exists() && std::fs::canonicalize(out).ok() == std::fs::canonicalize(base).ok() {
        return Err(StylusError::InvalidArgument(format!(
            "--out {} is the base checkpoint; write the merge somewhere else",
            out.display()
        )));
    }
    let checkpoint = BaseCheckpoint::open(base)?;
    let parsed: Vec<LoraAdapter> = adapters
        .iter()
        .map(|a| load_adapter(&a.path, &checkpoint.table, ParseOptions::default()))
        .collect::<Result<_>>()?;
    let scaled: Vec<ScaledAdapter<'_>> = parsed
        .iter()
        .zip(adapters)
        .map(|(adapter, s)| ScaledAdapter {
            adapter,
            unet: s.unet,
            text_encoder: s.text_encoder,
        })
        .collect();

    let device = cpu_device();
    let read = |network: Network, name: &str| -> Result<Option<(usize, String, Vec<f32>)>> {
        let Some((index, key)) = checkpoint.locate(network, name) else {
            return Ok(None);
        };
        Ok(Some((
            index,
            key.to_string(),
            checkpoint.files[index].file.f32(key)?,
        )))
    };
    let base_tensors = |target: &super::TargetModule| -> Result<BaseTensors<CpuBackend>> {
        let weight_name = format!("{}.weight", target.id);
        let (_, _, weight) =
            read(target.network, &weight_name)?.ok_or_else(|| StylusError::Model {
                path: base.to_path_buf(),
                message: format!("the checkpoint has no tensor for `{weight_name}`"),
            })?;
        let weight = Tensor::from_data(
            TensorData::new(weight, [target.out_features(), target.in_elements()]),
            &device,
        );
        let bias = read(target.network, &format!("{}.bias", target.id))?.map(|(_, _, values)| {
            let count = values.len();
            Tensor::from_data(TensorData::new(values, [count]), &device)
        });
        Ok((weight, bias))
    };
    let merged = merge_targets(&checkpoint.table, &scaled, base_tensors, &device)?;

    // New bytes per (file, key), in the tensor's own dtype.
    let mut replaced: BTreeMap<(usize, String), Vec<u8>> = BTreeMap::new();
    for result in merged {
        let target = checkpoint.table.module(result.target);
        let mut tensors = vec![("weight", result.weight.into_data())];
        if let Some(bias) = result.bias {
            tensors.push(("bias", bias.into_data()));
        }
        for (field, data) in tensors {
            let name = format!("{}.{field}", target.id);
            let (index, key) = checkpoint
                .locate(target.network, &name)
                .expect("read above");
            let dtype = checkpoint.files[index].file.info(key)?.dtype;
            let values = data
                .into_vec::<f32>()
                .map_err(|e| StylusError::tensor(base, key, format!("{e:?}")))?;
            let bytes = encode_floats(&values, dtype).ok_or_else(|| {
                StylusError::tensor(base, key, format!("cannot write dtype {dtype:?}"))
            })?;
            replaced.insert((index, key.to_string()), bytes);
        }
    }

    let mut files_written = Vec::new();
    if checkpoint.layout == "single file" {
        write_file(&checkpoint.files[0].file, 0, &replaced, out)?;
        files_written.push(out.to_path_buf());
    } else {
        copy_folder(
            base,
            out,
            &checkpoint
                .files
                .iter()
                .map(|f| f.file.path().to_path_buf())
                .collect::<Vec<_>>(),
        )?;
        for (index, weight_file) in checkpoint.files.iter().enumerate() {
            let relative = weight_file
                .file
                .path()
                .strip_prefix(base)
                .expect("inside the base folder");
            let target = out.join(relative);
            write_file(&weight_file.file, index, &replaced, &target)?;
            files_written.push(target);
        }
    }

    Ok(CheckpointMergeReport {
        layout: checkpoint.layout,
        adapters: parsed
            .iter()
            .map(|a| AdapterMergeStats {
                path: a.path.clone(),
                format: a.format.clone(),
                matched_modules: a.modules.len(),
                unmatched_modules: a.unmatched.clone(),
            })
            .collect(),
        merged_tensors: replaced.len(),
        files_written,
        millis: started.elapsed().as_secs_f64() * 1000.0,
    })
}

/// Writes `file` to `out` with the tensors of `replaced` (keyed by this file's `index`) swapped
/// in, keeping the metadata.
fn write_file(
    file: &TensorFile,
    index: usize,
    replaced: &BTreeMap<(usize, String), Vec<u8>>,
    out: &Path,
) -> Result<()> {
    let tensors: Vec<(String, OutputTensor<'_>)> = file
        .tensors()
        .iter()
        .map(|(key, info)| {
            let bytes = match replaced.get(&(index, key.clone())) {
                Some(bytes) => Cow::Borrowed(bytes.as_slice()),
                None => Cow::Borrowed(file.raw(key)?),
            };
            Ok((
                key.clone(),
                OutputTensor {
                    dtype: info.dtype,
                    shape: &info.shape,
                    bytes,
                },
            ))
        })
        .collect::<Result<_>>()?;
    let metadata: HashMap<String, String> = file.metadata().clone().into_iter().collect();
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).map_err(|e| StylusError::io(parent, e))?;
    }
    // Written beside `out` and renamed over it: a failed or interrupted merge leaves whatever
    // was at `out` intact.
    let mut tmp_name = out.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = out.with_file_name(tmp_name);
    let written = safetensors::serialize_to_file(
        tensors.iter().map(|(k, v)| (k.as_str(), v)),
        (!metadata.is_empty()).then_some(metadata),
        &tmp,
    )
    .map_err(|e| StylusError::Safetensors {
        path: out.to_path_buf(),
        message: e.to_string(),
        source: Some(Box::new(e)),
    })
    .and_then(|()| std::fs::rename(&tmp, out).map_err(|e| StylusError::io(out, e)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Copies the folder `from` to `to`, except the files in `skip` (written separately).
fn copy_folder(from: &Path, to: &Path, skip: &[PathBuf]) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| StylusError::io(to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| StylusError::io(from, e))? {
        let entry = entry.map_err(|e| StylusError::io(from, e))?;
        let source = entry.path();
        let target = to.join(entry.file_name());
        if source.is_dir() {
            copy_folder(&source, &target, skip)?;
        } else if !skip.contains(&source) {
            std::fs::copy(&source, &target).map_err(|e| StylusError::io(&source, e))?;
        }
    }
    Ok(())
}
