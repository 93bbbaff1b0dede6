//! Reading tensors out of a `.safetensors` file with typed errors: truncated or malformed files,
//! non-float tensors and non-finite values are reported with the file and the tensor name.
//!
//! The file is memory-mapped ([`super::mapped`]), never read whole into memory; each tensor is
//! decoded from the mapped bytes in one pass ([`super::decode`]) and its pages are handed back
//! right after, so a load's peak memory is the model plus about one tensor.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::{DType, TensorData};
use safetensors::{Dtype, SafeTensors};
use stylus_core::{Result, StylusError};

use super::decode::{DecodeError, decode};
use super::mapped::FileBytes;

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

/// A memory-mapped safetensors file, with its header parsed and validated. Clones share the map.
#[derive(Debug, Clone)]
pub struct SafetensorsFile {
    path: PathBuf,
    bytes: Arc<FileBytes>,
    entries: BTreeMap<String, TensorEntry>,
}

impl SafetensorsFile {
    /// Maps and validates `path` (header, offsets, file length). Pickle files are refused.
    pub fn open(path: &Path) -> Result<Self> {
        refuse_pickle(path)?;
        Self::parse(path, FileBytes::map(path)?)
    }

    /// Parses an in-memory safetensors image; `path` names it in errors.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self> {
        Self::parse(path, FileBytes::from_vec(bytes))
    }

    fn parse(path: &Path, bytes: FileBytes) -> Result<Self> {
        let invalid = |message: String| StylusError::Safetensors {
            path: path.to_path_buf(),
            message,
            source: None,
        };
        // `read_metadata` checks the header size limit, the offsets and the file length; the
        // entries below are owned copies, so nothing structural is read from the map again.
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

    /// An error if the mapped file was rewritten in place since it was opened (see
    /// [`FileBytes::check_unchanged`]).
    pub fn check_unchanged(&self) -> Result<()> {
        self.bytes.check_unchanged(&self.path)
    }

    /// The tensor `key` converted to `dtype` (F32, F16 or BF16) with `shape` (which must have as
    /// many elements), after checking that every value is finite. With `transpose_2d` the stored
    /// tensor is a PyTorch `Linear` weight `[out, in]` and `shape` is burn's `[in, out]`.
    pub fn float_data(
        &self,
        key: &str,
        dtype: DType,
        shape: &[usize],
        transpose_2d: bool,
    ) -> Result<TensorData> {
        let tensor_error = |message: String| StylusError::Tensor {
            path: self.path.clone(),
            key: key.to_string(),
            message,
        };
        let entry = self
            .entries
            .get(key)
            .ok_or_else(|| tensor_error("not in the file".into()))?;
        let bytes = &self.bytes[entry.range.0..entry.range.1];
        let count = bytes.len() / (entry.dtype.bitsize() / 8).max(1);
        if count != shape.iter().product::<usize>() {
            return Err(tensor_error(format!(
                "{count} values cannot be viewed as shape {shape:?}"
            )));
        }
        let data = decode(bytes, entry.dtype, dtype, shape, transpose_2d);
        self.bytes.release(entry.range.0..entry.range.1);
        data.map_err(|error| match error {
            DecodeError::NotFloat => {
                tensor_error(format!("dtype {:?} is not a float type", entry.dtype))
            }
            DecodeError::NonFinite { index, value } => tensor_error(format!(
                "contains a non-finite value ({value}) at flat index {index}"
            )),
            DecodeError::UnsupportedTarget(other) => StylusError::Device(format!(
                "model dtype {other:?} is not supported (use F32, F16 or BF16)"
            )),
        })
    }
}
