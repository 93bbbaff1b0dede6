//! Reading the tensors of a BERT `model.safetensors`: every tensor the encoder needs must be
//! there with the right shape, and every tensor in the file must be used or known to be unused.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use burn::tensor::{DType, TensorData};
use safetensors::{Dtype, SafeTensors};
use stylus_core::{Result, StylusError};

/// Tensors a BERT checkpoint carries that sentence embedding does not use: the position id
/// buffer (positions are always 0..len) and the next-sentence pooler.
const UNUSED_TENSORS: [&str; 3] = [
    "embeddings.position_ids",
    "pooler.dense.weight",
    "pooler.dense.bias",
];

/// The tensors of one safetensors file, handed out by name and checked for shape.
pub(crate) struct WeightFile<'a> {
    path: PathBuf,
    tensors: SafeTensors<'a>,
    /// `bert.` when the file was saved from `BertForXxx` rather than `BertModel`.
    prefix: &'static str,
    taken: BTreeSet<String>,
}

impl<'a> WeightFile<'a> {
    /// Parses the header of `bytes` (the content of `path`).
    pub(crate) fn parse(path: &Path, bytes: &'a [u8]) -> Result<Self> {
        let tensors = SafeTensors::deserialize(bytes).map_err(|e| StylusError::Safetensors {
            path: path.to_owned(),
            message: e.to_string(),
            source: Some(Box::new(e)),
        })?;
        let probe = "embeddings.word_embeddings.weight";
        let prefix = if tensors.tensor(probe).is_ok() {
            ""
        } else if tensors.tensor(&format!("bert.{probe}")).is_ok() {
            "bert."
        } else {
            return Err(StylusError::tensor(
                path,
                probe,
                "missing (with or without the `bert.` prefix): not a BERT checkpoint",
            ));
        };
        Ok(WeightFile {
            path: path.to_owned(),
            tensors,
            prefix,
            taken: BTreeSet::new(),
        })
    }

    /// The tensor `name` (without prefix) as f32 data of exactly `shape`.
    pub(crate) fn take(&mut self, name: &str, shape: &[usize]) -> Result<TensorData> {
        Ok(TensorData::new(
            self.take_values(name, shape)?,
            shape.to_vec(),
        ))
    }

    /// The tensor `name` of a PyTorch `nn.Linear` (`[out, in]`) transposed to burn's `[in, out]`.
    pub(crate) fn take_linear_weight(
        &mut self,
        name: &str,
        d_in: usize,
        d_out: usize,
    ) -> Result<TensorData> {
        let rows = self.take_values(name, &[d_out, d_in])?;
        let mut transposed = vec![0.0f32; rows.len()];
        for (o, row) in rows.chunks_exact(d_in).enumerate() {
            for (i, value) in row.iter().enumerate() {
                transposed[i * d_out + o] = *value;
            }
        }
        Ok(TensorData::new(transposed, [d_in, d_out]))
    }

    /// The values of tensor `name` (row-major, converted to f32) after checking its shape, dtype
    /// and finiteness.
    fn take_values(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let key = format!("{}{name}", self.prefix);
        let view = self
            .tensors
            .tensor(&key)
            .map_err(|_| StylusError::tensor(&self.path, &key, "missing"))?;
        if view.shape() != shape {
            return Err(StylusError::tensor(
                &self.path,
                &key,
                format!("expected shape {shape:?}, found {:?}", view.shape()),
            ));
        }
        let dtype = match view.dtype() {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            other => {
                return Err(StylusError::tensor(
                    &self.path,
                    &key,
                    format!("dtype {other:?} (expected F32, F16 or BF16)"),
                ));
            }
        };
        let values = TensorData::from_bytes_vec(view.data().to_vec(), shape.to_vec(), dtype)
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| StylusError::tensor(&self.path, &key, format!("unreadable: {e:?}")))?;
        if values.iter().any(|v| !v.is_finite()) {
            return Err(StylusError::tensor(
                &self.path,
                &key,
                "contains NaN or infinite values",
            ));
        }
        self.taken.insert(key);
        Ok(values)
    }

    /// Fails on the first tensor that was neither taken nor known to be unused.
    pub(crate) fn finish(self) -> Result<()> {
        let unexpected: Vec<&str> = self
            .tensors
            .names()
            .into_iter()
            .filter(|name| !self.taken.contains(*name))
            .filter(|name| {
                let bare = name.strip_prefix(self.prefix).unwrap_or(name);
                !UNUSED_TENSORS.contains(&bare)
            })
            .collect();
        let mut sorted = unexpected;
        sorted.sort_unstable();
        match sorted.first() {
            None => Ok(()),
            Some(first) => Err(StylusError::tensor(
                &self.path,
                *first,
                format!(
                    "unexpected tensor ({} unexpected in total: {})",
                    sorted.len(),
                    sorted
                        .iter()
                        .take(8)
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }
}
