//! Reading tensors out of a `.safetensors` file with typed errors: truncated or malformed files,
//! non-float tensors and non-finite values are reported with the file and the tensor name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::{DType, TensorData};
use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};
use stylus_core::{Result, StylusError};

use crate::lora::file::decode_floats;

/// File extensions of pickle-based PyTorch checkpoints, which can run arbitrary code on load.
const PICKLE_EXTENSIONS: &[&str] = &["ckpt", "pt", "pth", "bin", "pkl"];

/// Refuses pickle checkpoints by extension, before anything is read.
pub fn refuse_pickle(path: &Path) -> Result<()> {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    if PICKLE_EXTENSIONS.contains(&extension.as_str()) {
        return Err(StylusError::UnsupportedFormat {
            path: path.to_path_buf(),
            message: format!(
                "`.{extension}` files are Python pickles, which can execute code when loaded; \
                 convert the checkpoint to .safetensors first"
            ),
        });
    }
    Ok(())
}

/// One tensor's header entry.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    /// Element type in the file.
    pub dtype: Dtype,
    /// Shape in the file (PyTorch layout).
    pub shape: Vec<usize>,
    /// Byte range in the file.
    range: (usize, usize),
}

/// A safetensors file read into memory, with its header parsed and validated.
#[derive(Debug, Clone)]
pub struct SafetensorsFile {
    path: PathBuf,
    bytes: Arc<Vec<u8>>,
    entries: BTreeMap<String, TensorEntry>,
}

impl SafetensorsFile {
    /// Reads and validates `path` (header, offsets, file length). Pickle files are refused.
    pub fn open(path: &Path) -> Result<Self> {
        refuse_pickle(path)?;
        let bytes = std::fs::read(path).map_err(|e| StylusError::io(path, e))?;
        Self::from_bytes(path, bytes)
    }

    /// Parses an in-memory safetensors image; `path` names it in errors.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self> {
        let invalid = |message: String| StylusError::Safetensors {
            path: path.to_path_buf(),
            message,
        };
        let (header_len, metadata) =
            SafeTensors::read_metadata(&bytes).map_err(|e| invalid(e.to_string()))?;
        let data_start = 8 + header_len;
        let mut entries = BTreeMap::new();
        for (name, info) in metadata.tensors() {
            let (start, end) = info.data_offsets;
            entries.insert(
                name,
                TensorEntry {
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    range: (data_start + start, data_start + end),
                },
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
            bytes: Arc::new(bytes),
            entries,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All tensors by name, sorted.
    pub fn entries(&self) -> &BTreeMap<String, TensorEntry> {
        &self.entries
    }

    /// The tensor `key` converted to `dtype` (F32, F16 or BF16), reshaped to `shape` (which must
    /// have as many elements), after checking that every value is finite.
    pub fn float_data(&self, key: &str, dtype: DType, shape: &[usize]) -> Result<TensorData> {
        let tensor_error = |message: String| StylusError::Tensor {
            path: self.path.clone(),
            key: key.to_string(),
            message,
        };
        let entry = self
            .entries
            .get(key)
            .ok_or_else(|| tensor_error("not in the file".into()))?;
        let values = decode_floats(&self.bytes[entry.range.0..entry.range.1], entry.dtype)
            .ok_or_else(|| tensor_error(format!("dtype {:?} is not a float type", entry.dtype)))?;
        if values.len() != shape.iter().product::<usize>() {
            return Err(tensor_error(format!(
                "{} values cannot be viewed as shape {shape:?}",
                values.len()
            )));
        }
        if let Some(index) = values.iter().position(|v| !v.is_finite()) {
            return Err(tensor_error(format!(
                "contains a non-finite value ({}) at flat index {index}",
                values[index]
            )));
        }
        Ok(match dtype {
            DType::F16 => TensorData::new(
                values.into_iter().map(f16::from_f32).collect(),
                shape.to_vec(),
            ),
            DType::BF16 => TensorData::new(
                values.into_iter().map(bf16::from_f32).collect(),
                shape.to_vec(),
            ),
            DType::F32 => TensorData::new(values, shape.to_vec()),
            other => {
                return Err(StylusError::Device(format!(
                    "model dtype {other:?} is not supported (use F32, F16 or BF16)"
                )));
            }
        })
    }
}
