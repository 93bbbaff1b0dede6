//! A memory-mapped safetensors file with its header validated: tensor entries, string metadata,
//! values decoded to f32, raw bytes (for dtype-preserving rewrites) and the kohya content hash.
//! The map follows [`crate::checkpoint::mapped`] (read-only, header copied out at open).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};
use sha2::{Digest, Sha256};
use stylus_core::{Result, StylusError};

use crate::checkpoint::decode::{DecodeError, to_f32};
use crate::checkpoint::mapped::FileBytes;
use crate::checkpoint::safetensors_file::refuse_pickle;

/// One tensor's header entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Element type in the file.
    pub dtype: Dtype,
    /// Shape in the file (PyTorch layout).
    pub shape: Vec<usize>,
    /// Byte range in the file.
    range: (usize, usize),
}

impl TensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A validated safetensors file (header at most 100 MB, offsets in range, known dtypes),
/// memory-mapped. Pickle files are refused by extension before anything is read. Clones share
/// the map.
#[derive(Debug, Clone)]
pub struct TensorFile {
    path: PathBuf,
    bytes: Arc<FileBytes>,
    data_start: usize,
    tensors: BTreeMap<String, TensorInfo>,
    metadata: BTreeMap<String, String>,
}

impl TensorFile {
    /// Maps and validates `path`.
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
        // `deserialize` checks the header size limit, the offsets and the file length.
        SafeTensors::deserialize(&bytes).map_err(|e| invalid(e.to_string()))?;
        let (header_len, header) =
            SafeTensors::read_metadata(&bytes).map_err(|e| invalid(e.to_string()))?;
        let tensors = header
            .tensors()
            .into_iter()
            .map(|(name, info)| {
                let entry = TensorInfo {
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    range: info.data_offsets,
                };
                (name, entry)
            })
            .collect();
        let metadata = header
            .metadata()
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        Ok(Self {
            path: path.to_path_buf(),
            bytes: Arc::new(bytes),
            data_start: 8 + header_len,
            tensors,
            metadata,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All tensors by name, sorted.
    pub fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        &self.tensors
    }

    /// The `__metadata__` strings of the header.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The header entry of `key`, or a [`StylusError::Tensor`] naming it.
    pub fn info(&self, key: &str) -> Result<&TensorInfo> {
        self.tensors
            .get(key)
            .ok_or_else(|| StylusError::tensor(&self.path, key, "not in the file"))
    }

    /// The little-endian bytes of `key` as stored.
    pub fn raw(&self, key: &str) -> Result<&[u8]> {
        let info = self.info(key)?;
        Ok(&self.bytes[self.data_start + info.range.0..self.data_start + info.range.1])
    }

    /// The values of the float tensor `key` as f32. Non-float tensors and non-finite values are
    /// errors naming the tensor.
    pub fn f32(&self, key: &str) -> Result<Vec<f32>> {
        let info = self.info(key)?;
        to_f32(self.raw(key)?, info.dtype).map_err(|error| {
            let message = match error {
                DecodeError::NonFinite { index, value } => {
                    format!("non-finite value {value} at flat index {index}")
                }
                _ => format!(
                    "dtype {:?} is not a float type (F16, BF16, F32 or F64)",
                    info.dtype
                ),
            };
            StylusError::tensor(&self.path, key, message)
        })
    }

    /// The single value of a one-element tensor of any numeric dtype (alphas, flags).
    pub fn scalar(&self, key: &str) -> Result<f64> {
        let info = self.info(key)?;
        if info.numel() != 1 {
            return Err(StylusError::tensor(
                &self.path,
                key,
                format!("expected one value, got shape {:?}", info.shape),
            ));
        }
        let raw = self.raw(key)?;
        let value = match info.dtype {
            Dtype::BOOL | Dtype::U8 => f64::from(raw[0]),
            Dtype::I8 => f64::from(raw[0] as i8),
            Dtype::I16 => f64::from(i16::from_le_bytes([raw[0], raw[1]])),
            Dtype::I32 => f64::from(i32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]])),
            Dtype::I64 => i64::from_le_bytes(raw[..8].try_into().expect("8 bytes")) as f64,
            dtype => f64::from(
                decode_floats(raw, dtype)
                    .and_then(|v| v.first().copied())
                    .ok_or_else(|| {
                        StylusError::tensor(&self.path, key, format!("unsupported dtype {dtype:?}"))
                    })?,
            ),
        };
        if !value.is_finite() {
            return Err(StylusError::tensor(
                &self.path,
                key,
                format!("non-finite value {value}"),
            ));
        }
        Ok(value)
    }

    /// sha256 of the tensor data (everything after the header), in hex. This is kohya's
    /// `sshs_model_hash`: it does not change when only the metadata changes.
    pub fn content_hash(&self) -> String {
        hex::encode(Sha256::digest(&self.bytes[self.data_start..]))
    }
}

/// Little-endian float payload to f32; `None` for non-float dtypes.
pub fn decode_floats(bytes: &[u8], dtype: Dtype) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        _ => return None,
    })
}

/// f32 values encoded as little-endian `dtype` (F32, F16, BF16 or F64); `None` for other dtypes.
pub fn encode_floats(values: &[f32], dtype: Dtype) -> Option<Vec<u8>> {
    Some(match dtype {
        Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::F16 => values
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect(),
        Dtype::BF16 => values
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect(),
        Dtype::F64 => values
            .iter()
            .flat_map(|v| f64::from(*v).to_le_bytes())
            .collect(),
        _ => return None,
    })
}
