//! Stored tensor bytes to model-ready [`TensorData`] in one parallel pass: each chunk is
//! converted from its stored dtype (f16/bf16 with the CPU's conversion instructions through
//! `half`) straight into the output buffer and checked for non-finite values while it is still
//! in cache; a `Linear` weight is then transposed once into burn's `[in, out]` layout.

use burn::tensor::{DType, TensorData};
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use half::{bf16, f16};
use rayon::prelude::*;
use safetensors::Dtype;

use crate::lora::file::decode_floats;

/// Values per parallel chunk: large enough to amortize scheduling, small enough to stay in L2
/// between conversion and the finiteness check.
const CHUNK: usize = 1 << 15;

/// Output rows per parallel task of the transpose (a column block of the source).
const TRANSPOSE_BLOCK: usize = 16;

/// Why stored bytes could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DecodeError {
    /// The stored dtype is not a float type.
    NotFloat,
    /// The first non-finite value and its flat index (in the stored layout).
    NonFinite {
        /// Flat index in the file's row-major order.
        index: usize,
        /// The value, as f32.
        value: f32,
    },
    /// The model dtype is not F32, F16 or BF16.
    UnsupportedTarget(DType),
}

/// The stored values as a typed slice, when the bytes are aligned for it (safetensors pads the
/// header so that data starts 8-aligned; a file that does not gets the slower byte path).
enum Stored<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Bf16(&'a [bf16]),
}

fn stored(bytes: &[u8], dtype: Dtype) -> Option<Stored<'_>> {
    if cfg!(target_endian = "big") {
        return None;
    }
    match dtype {
        Dtype::F32 => bytemuck::try_cast_slice(bytes).ok().map(Stored::F32),
        Dtype::F16 => bytemuck::try_cast_slice::<u8, u16>(bytes)
            .ok()
            .map(|bits| Stored::F16(bits.reinterpret_cast())),
        Dtype::BF16 => bytemuck::try_cast_slice::<u8, u16>(bytes)
            .ok()
            .map(|bits| Stored::Bf16(bits.reinterpret_cast())),
        _ => None,
    }
}

/// The first non-finite value of `values` as `(index, value)`.
fn first_non_finite(values: &[f32]) -> Option<(usize, f32)> {
    // `all` over a branch-free predicate vectorizes; the position is only searched on failure.
    if values.iter().all(|v| v.is_finite()) {
        return None;
    }
    values
        .iter()
        .position(|v| !v.is_finite())
        .map(|i| (i, values[i]))
}

/// Little-endian float bytes of `dtype` to f32, checked finite (in parallel chunks).
pub fn to_f32(bytes: &[u8], dtype: Dtype) -> Result<Vec<f32>, DecodeError> {
    let Some(source) = stored(bytes, dtype) else {
        let values = decode_floats(bytes, dtype).ok_or(DecodeError::NotFloat)?;
        return match first_non_finite(&values) {
            Some((index, value)) => Err(DecodeError::NonFinite { index, value }),
            None => Ok(values),
        };
    };
    let len = match source {
        Stored::F32(s) => s.len(),
        Stored::F16(s) => s.len(),
        Stored::Bf16(s) => s.len(),
    };
    // Zeroed allocation comes from fresh pages: nothing is written before the conversion.
    let mut out = vec![0.0f32; len];
    let failure = out
        .par_chunks_mut(CHUNK)
        .enumerate()
        .filter_map(|(chunk, dst)| {
            let start = chunk * CHUNK;
            let range = start..start + dst.len();
            match &source {
                Stored::F32(s) => dst.copy_from_slice(&s[range]),
                Stored::F16(s) => s[range].convert_to_f32_slice(dst),
                Stored::Bf16(s) => s[range].convert_to_f32_slice(dst),
            }
            first_non_finite(dst).map(|(i, v)| (start + i, v))
        })
        .min_by_key(|(index, _)| *index);
    match failure {
        Some((index, value)) => Err(DecodeError::NonFinite { index, value }),
        None => Ok(out),
    }
}

/// Stored `[rows, cols]` values straight to f32 `[cols, rows]`, checked finite, without an
/// intermediate row-major buffer: in parallel over blocks of output rows, each task converts a
/// `TRANSPOSE_BLOCK`-wide column strip of the source row by row (a few values, in registers)
/// and writes it transposed; the strip's output lines stay in cache.
fn to_f32_transposed(
    source: &Stored<'_>,
    rows: usize,
    cols: usize,
) -> Result<Vec<f32>, DecodeError> {
    let mut out = vec![0.0f32; rows * cols];
    if rows == 0 || cols == 0 {
        return Ok(out);
    }
    let failure = out
        .par_chunks_mut(TRANSPOSE_BLOCK * rows)
        .enumerate()
        .filter_map(|(block, dst)| {
            let first_col = block * TRANSPOSE_BLOCK;
            let width = dst.len() / rows;
            let mut strip = [0.0f32; TRANSPOSE_BLOCK];
            let strip = &mut strip[..width];
            let mut first: Option<(usize, f32)> = None;
            for row in 0..rows {
                let start = row * cols + first_col;
                match source {
                    Stored::F32(s) => strip.copy_from_slice(&s[start..start + width]),
                    Stored::F16(s) => s[start..start + width].convert_to_f32_slice(strip),
                    Stored::Bf16(s) => s[start..start + width].convert_to_f32_slice(strip),
                }
                if first.is_none()
                    && let Some((offset, value)) = first_non_finite(strip)
                {
                    first = Some((start + offset, value));
                }
                for (offset, value) in strip.iter().enumerate() {
                    dst[offset * rows + row] = *value;
                }
            }
            first
        })
        .min_by_key(|(index, _)| *index);
    match failure {
        Some((index, value)) => Err(DecodeError::NonFinite { index, value }),
        None => Ok(out),
    }
}

/// `[rows, cols]` row-major to `[cols, rows]` (the byte path for unaligned files).
fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(values.len());
    for col in 0..cols {
        out.extend((0..rows).map(|row| values[row * cols + col]));
    }
    out
}

/// Decodes a stored tensor into `target` dtype with `shape`. When `transpose_2d` is set the
/// stored tensor is a `[rows, cols]` PyTorch `Linear` weight and `shape` is `[cols, rows]`.
pub fn decode(
    bytes: &[u8],
    dtype: Dtype,
    target: DType,
    shape: &[usize],
    transpose_2d: bool,
) -> Result<TensorData, DecodeError> {
    let values = match (transpose_2d && shape.len() == 2, stored(bytes, dtype)) {
        (true, Some(source)) => to_f32_transposed(&source, shape[1], shape[0])?,
        (true, None) => transpose(&to_f32(bytes, dtype)?, shape[1], shape[0]),
        (false, _) => to_f32(bytes, dtype)?,
    };
    Ok(match target {
        DType::F32 => TensorData::new(values, shape.to_vec()),
        DType::F16 => {
            let mut out = vec![f16::ZERO; values.len()];
            out.par_chunks_mut(CHUNK)
                .zip(values.par_chunks(CHUNK))
                .for_each(|(dst, src)| dst.convert_from_f32_slice(src));
            TensorData::new(out, shape.to_vec())
        }
        DType::BF16 => {
            let mut out = vec![bf16::ZERO; values.len()];
            out.par_chunks_mut(CHUNK)
                .zip(values.par_chunks(CHUNK))
                .for_each(|(dst, src)| dst.convert_from_f32_slice(src));
            TensorData::new(out, shape.to_vec())
        }
        other => return Err(DecodeError::UnsupportedTarget(other)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16_bytes(values: &[f32]) -> Vec<u8> {
        values
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect()
    }

    #[test]
    fn f16_decodes_to_f32_and_transposes() {
        let bytes = f16_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let data = decode(&bytes, Dtype::F16, DType::F32, &[2, 3], false).unwrap();
        assert_eq!(
            data.to_vec::<f32>().unwrap(),
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        );
        // Stored [2, 3] -> burn [3, 2].
        let data = decode(&bytes, Dtype::F16, DType::F32, &[3, 2], true).unwrap();
        assert_eq!(data.shape.to_vec(), vec![3, 2]);
        assert_eq!(
            data.to_vec::<f32>().unwrap(),
            vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]
        );
    }

    #[test]
    fn transpose_matches_the_definition_across_blocks() {
        let (rows, cols) = (37, 53);
        let values: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
        let bytes = f16_bytes(&values);
        let fused = decode(&bytes, Dtype::F16, DType::F32, &[cols, rows], true).unwrap();
        let fused = fused.to_vec::<f32>().unwrap();
        let mut unaligned = vec![0u8];
        unaligned.extend(&bytes);
        let slow = decode(&unaligned[1..], Dtype::F16, DType::F32, &[cols, rows], true).unwrap();
        assert_eq!(slow.to_vec::<f32>().unwrap(), fused);
        for r in 0..rows {
            for c in 0..cols {
                assert_eq!(fused[c * rows + r], values[r * cols + c]);
            }
        }
    }

    #[test]
    fn a_transposed_tensor_reports_the_first_non_finite_in_stored_order() {
        let (rows, cols) = (40, 40);
        let mut values = vec![0.25f32; rows * cols];
        values[5 * cols + 30] = f32::NEG_INFINITY;
        values[7 * cols + 2] = f32::NAN;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        match decode(&bytes, Dtype::F32, DType::F32, &[cols, rows], true) {
            Err(DecodeError::NonFinite { index, value }) => {
                assert_eq!(index, 5 * cols + 30);
                assert_eq!(value, f32::NEG_INFINITY);
            }
            other => panic!("expected a non-finite error, got {other:?}"),
        }
    }

    #[test]
    fn non_finite_reports_the_first_index_across_chunks() {
        let mut values = vec![0.5f32; 3 * CHUNK];
        values[2 * CHUNK + 7] = f32::INFINITY;
        values[CHUNK + 3] = f32::NAN;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        match decode(&bytes, Dtype::F32, DType::F32, &[3 * CHUNK], false) {
            Err(DecodeError::NonFinite { index, value }) => {
                assert_eq!(index, CHUNK + 3);
                assert!(value.is_nan());
            }
            other => panic!("expected a non-finite error, got {other:?}"),
        }
    }

    #[test]
    fn unaligned_bytes_take_the_byte_path() {
        let mut bytes = vec![0u8];
        bytes.extend(f16_bytes(&[1.5, -2.0]));
        let data = decode(&bytes[1..], Dtype::F16, DType::BF16, &[2], false).unwrap();
        assert_eq!(
            data.to_vec::<bf16>().unwrap(),
            vec![bf16::from_f32(1.5), bf16::from_f32(-2.0)]
        );
        assert_eq!(
            decode(&[0, 0, 0, 0], Dtype::I32, DType::F32, &[1], false),
            Err(DecodeError::NotFloat)
        );
    }
}
