//! Row-major matrices of L2-normalized f32 vectors and the dot-product kernel every retriever uses.

use std::sync::Arc;

use stylus_core::{Result, StylusError};

/// How far a stored vector's norm may stray from 1 before it is refused (embedders normalize in
/// f32, so anything further off is a different kind of vector, not rounding).
const NORM_TOLERANCE: f32 = 1e-2;

/// `count` vectors of `dim` floats, row-major, each L2-normalized. Cheap to clone (shared).
#[derive(Debug, Clone, PartialEq)]
pub struct VectorMatrix {
    dim: usize,
    data: Arc<[f32]>,
}

impl VectorMatrix {
    /// Takes `data` (row-major, `data.len()` a multiple of `dim`). Rows must be finite with a norm
    /// close to 1; they are renormalized exactly so similarity scores are true cosines.
    pub fn new(dim: usize, mut data: Vec<f32>) -> Result<Self> {
        if dim == 0 {
            return Err(StylusError::InvalidArgument(
                "vector dimension must be at least 1".into(),
            ));
        }
        if !data.len().is_multiple_of(dim) {
            return Err(StylusError::InvalidArgument(format!(
                "{} floats are not a whole number of {dim}-dimensional vectors",
                data.len()
            )));
        }
        for (row, v) in data.chunks_exact_mut(dim).enumerate() {
            let norm = dot(v, v).sqrt();
            if !norm.is_finite() || (norm - 1.0).abs() > NORM_TOLERANCE {
                return Err(StylusError::InvalidArgument(format!(
                    "vector {row} has norm {norm}; retrievers need L2-normalized vectors"
                )));
            }
            v.iter_mut().for_each(|x| *x /= norm);
        }
        Ok(Self {
            dim,
            data: data.into(),
        })
    }

    /// Builds a matrix from one `Vec` per row (what [`stylus_core::Embedder::embed`] returns).
    pub fn from_rows(dim: usize, rows: &[Vec<f32>]) -> Result<Self> {
        let mut data = Vec::with_capacity(rows.len() * dim);
        for (i, row) in rows.iter().enumerate() {
            if row.len() != dim {
                return Err(StylusError::Dimension {
                    what: format!("vector {i}"),
                    expected: dim,
                    got: row.len(),
                });
            }
            data.extend_from_slice(row);
        }
        Self::new(dim, data)
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.data.len() / self.dim
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Vector `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// All floats, row-major.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    /// Size of the matrix in bytes (what one exact scan reads).
    pub fn byte_len(&self) -> usize {
        size_of_val(&*self.data)
    }
}

/// Checks a query against `dim` and returns it L2-normalized (scores are then cosines, and the
/// HNSW dot distance stays in range).
pub fn normalized_query(query: &[f32], dim: usize) -> Result<Vec<f32>> {
    if query.len() != dim {
        return Err(StylusError::Dimension {
            what: "query vector".into(),
            expected: dim,
            got: query.len(),
        });
    }
    let norm = dot(query, query).sqrt();
    if !norm.is_finite() || norm == 0.0 {
        return Err(StylusError::InvalidArgument(format!(
            "query vector has norm {norm}; it must be finite and non-zero"
        )));
    }
    Ok(query.iter().map(|x| x / norm).collect())
}

/// Lanes of independent partial sums: enough for LLVM to keep several SIMD registers busy
/// without needing to reassociate floating-point adds (which it will not do on its own).
const LANES: usize = 16;

/// Dot product of two equal-length slices, written so it auto-vectorizes.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Dot products of one row with `Q` queries at once: the row is read from memory once for all of
/// them, which is what makes batched exact search faster than one scan per query.
/// Uses half the lanes of [`dot`] so the accumulators of four queries still fit the 16 SIMD
/// registers of x86-64.
#[inline]
pub fn dot_many<const Q: usize>(row: &[f32], queries: &[&[f32]; Q]) -> [f32; Q] {
    const MANY_LANES: usize = LANES / 2;
    let mut acc = [[0f32; MANY_LANES]; Q];
    let rows = row.chunks_exact(MANY_LANES);
    let tail_start = row.len() - rows.remainder().len();
    for (c, x) in rows.enumerate() {
        let off = c * MANY_LANES;
        for (q, query) in queries.iter().enumerate() {
            let y = &query[off..off + MANY_LANES];
            for i in 0..MANY_LANES {
                acc[q][i] += x[i] * y[i];
            }
        }
    }
    let mut out = [0f32; Q];
    for q in 0..Q {
        let tail: f32 = row[tail_start..]
            .iter()
            .zip(&queries[q][tail_start..])
            .map(|(x, y)| x * y)
            .sum();
        out[q] = acc[q].iter().sum::<f32>() + tail;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
    }

    #[test]
    fn dot_matches_f64_reference_for_every_tail_length() {
        for len in [1, 7, 15, 16, 17, 33, 384, 385, 3072] {
            let a: Vec<f32> = (0..len)
                .map(|i| ((i * 7919) % 113) as f32 / 113.0 - 0.5)
                .collect();
            let b: Vec<f32> = (0..len)
                .map(|i| ((i * 104729) % 97) as f32 / 97.0 - 0.5)
                .collect();
            let want = naive(&a, &b);
            assert!(
                (dot(&a, &b) as f64 - want).abs() < 1e-4 * (1.0 + want.abs()),
                "{len}"
            );
            let many = dot_many(&a, &[&b[..], &a[..]]);
            assert!(
                (many[0] as f64 - want).abs() < 1e-4 * (1.0 + want.abs()),
                "{len}"
            );
            assert!((many[1] as f64 - naive(&a, &a)).abs() < 1e-3, "{len}");
        }
    }

    #[test]
    fn matrix_refuses_bad_shapes_and_unnormalized_rows() {
        assert!(VectorMatrix::new(0, vec![]).is_err());
        assert!(VectorMatrix::new(2, vec![1.0, 0.0, 1.0]).is_err());
        let err = VectorMatrix::new(2, vec![1.0, 0.0, 3.0, 4.0]).unwrap_err();
        assert!(err.to_string().contains("vector 1"), "{err}");
        assert!(VectorMatrix::new(2, vec![f32::NAN, 0.0]).is_err());
        let err = VectorMatrix::from_rows(2, &[vec![1.0, 0.0], vec![1.0]]).unwrap_err();
        assert!(
            matches!(err, StylusError::Dimension { got: 1, .. }),
            "{err}"
        );
        let m = VectorMatrix::new(2, vec![0.6, 0.8, 1.0, 0.0]).unwrap();
        assert_eq!((m.len(), m.dim(), m.byte_len()), (2, 2, 16));
    }

    #[test]
    fn query_is_checked_and_normalized() {
        assert!(matches!(
            normalized_query(&[1.0, 0.0, 0.0], 2),
            Err(StylusError::Dimension {
                expected: 2,
                got: 3,
                ..
            })
        ));
        assert!(normalized_query(&[0.0, 0.0], 2).is_err());
        assert!(normalized_query(&[f32::INFINITY, 0.0], 2).is_err());
        assert_eq!(normalized_query(&[3.0, 4.0], 2).unwrap(), vec![0.6, 0.8]);
    }
}
