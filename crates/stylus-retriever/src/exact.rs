//! `ExactRetriever`: brute-force top-K, the ground truth for recall.
//!
//! One pass over the row-major matrix per batch of up to [`QUERY_BLOCK`] queries, rows split into
//! chunks that rayon scores in parallel; rows the filter rejects are skipped inside the scan, and
//! each chunk keeps only its own top K before the chunks are merged.

use std::sync::Arc;

use rayon::prelude::*;
use stylus_core::{
    AdapterDoc, Candidate, Query, Result, RetrievalFilter, SearchIndex, StylusError,
};

use crate::filter::{FilterCache, FilterMask};
use crate::select::{Hit, top_k};
use crate::vectors::{VectorMatrix, dot_many, normalized_query};

/// Rows per parallel work item: large enough to amortize scheduling, small enough to balance two
/// to sixteen threads over 7K..75K rows.
const CHUNK_ROWS: usize = 2048;

/// Queries scored together in one pass over the matrix.
pub const QUERY_BLOCK: usize = 4;

/// Exact cosine top-K over L2-normalized document vectors.
#[derive(Debug)]
pub struct ExactRetriever {
    docs: Vec<Arc<AdapterDoc>>,
    vectors: VectorMatrix,
    filters: FilterCache,
}

impl ExactRetriever {
    /// One vector per document, in the same order.
    pub fn new(docs: Vec<Arc<AdapterDoc>>, vectors: VectorMatrix) -> Result<Self> {
        check_counts(&docs, &vectors)?;
        Ok(Self {
            docs,
            vectors,
            filters: FilterCache::default(),
        })
    }

    pub fn docs(&self) -> &[Arc<AdapterDoc>] {
        &self.docs
    }

    pub fn vectors(&self) -> &VectorMatrix {
        &self.vectors
    }

    /// The `k` most similar documents passing `filter`, best first (all of them, ranked, when
    /// fewer than `k` pass). `k` must be at least 1.
    pub fn search(&self, query: &[f32], k: usize, filter: &RetrievalFilter) -> Result<Vec<Hit>> {
        Ok(self.search_batch(&[query], k, filter)?.remove(0))
    }

    /// [`Self::search`] for many queries, [`QUERY_BLOCK`] at a time per pass over the matrix.
    pub fn search_batch<Q: AsRef<[f32]>>(
        &self,
        queries: &[Q],
        k: usize,
        filter: &RetrievalFilter,
    ) -> Result<Vec<Vec<Hit>>> {
        check_k(k)?;
        // More than every document is every document (a huge K allocates nothing more).
        let k = k.min(self.docs().len().max(1));
        let queries = queries
            .iter()
            .map(|q| normalized_query(q.as_ref(), self.vectors.dim()))
            .collect::<Result<Vec<_>>>()?;
        let mask = self.filters.mask(&self.docs, filter);
        Ok(self.search_normalized(&queries, k, mask.as_deref()))
    }

    /// The scan itself, for queries already checked and normalized.
    pub(crate) fn search_normalized(
        &self,
        queries: &[Vec<f32>],
        k: usize,
        mask: Option<&FilterMask>,
    ) -> Vec<Vec<Hit>> {
        let mut out = Vec::with_capacity(queries.len());
        let mut blocks = queries.chunks_exact(QUERY_BLOCK);
        for block in blocks.by_ref() {
            let block: [&[f32]; QUERY_BLOCK] = std::array::from_fn(|q| block[q].as_slice());
            out.extend(self.scan(&block, k, mask));
        }
        for query in blocks.remainder() {
            out.extend(self.scan(&[query.as_slice()], k, mask));
        }
        out
    }

    pub(crate) fn filter_mask(&self, filter: &RetrievalFilter) -> Option<Arc<FilterMask>> {
        self.filters.mask(&self.docs, filter)
    }

    /// Top `k` of every query in `queries` in one parallel pass over the rows.
    fn scan<const Q: usize>(
        &self,
        queries: &[&[f32]; Q],
        k: usize,
        mask: Option<&FilterMask>,
    ) -> [Vec<Hit>; Q] {
        let dim = self.vectors.dim();
        let per_chunk: Vec<[Vec<Hit>; Q]> = self
            .vectors
            .as_slice()
            .par_chunks(CHUNK_ROWS * dim)
            .enumerate()
            .map(|(c, rows)| {
                let first = c * CHUNK_ROWS;
                let mut hits: [Vec<Hit>; Q] =
                    std::array::from_fn(|_| Vec::with_capacity(rows.len() / dim));
                for (r, row) in rows.chunks_exact(dim).enumerate() {
                    let index = first + r;
                    if mask.is_some_and(|m| !m.accepts(index)) {
                        continue;
                    }
                    let scores = dot_many(row, queries);
                    for q in 0..Q {
                        hits[q].push(Hit {
                            index,
                            score: scores[q],
                        });
                    }
                }
                hits.map(|h| top_k(h, k))
            })
            .collect();
        std::array::from_fn(|q| {
            let merged: Vec<Hit> = per_chunk
                .iter()
                .flat_map(|c| c[q].iter().copied())
                .collect();
            top_k(merged, k)
        })
    }

    fn candidates(&self, hits: Vec<Hit>) -> Vec<Candidate> {
        to_candidates(&self.docs, hits)
    }
}

impl SearchIndex for ExactRetriever {
    fn dim(&self) -> usize {
        self.vectors.dim()
    }

    fn len(&self) -> usize {
        self.docs.len()
    }

    fn retrieve(
        &self,
        query: Query<'_>,
        k: usize,
        filter: &RetrievalFilter,
    ) -> Result<Vec<Candidate>> {
        Ok(self.candidates(self.search(query.vector, k, filter)?))
    }

    fn retrieve_batch(
        &self,
        queries: &[Query<'_>],
        k: usize,
        filter: &RetrievalFilter,
    ) -> Result<Vec<Vec<Candidate>>> {
        let vectors: Vec<&[f32]> = queries.iter().map(|q| q.vector).collect();
        Ok(self
            .search_batch(&vectors, k, filter)?
            .into_iter()
            .map(|hits| self.candidates(hits))
            .collect())
    }
}

/// Hits as candidates carrying their documents.
pub(crate) fn to_candidates(docs: &[Arc<AdapterDoc>], hits: Vec<Hit>) -> Vec<Candidate> {
    hits.into_iter()
        .map(|h| Candidate {
            doc: Arc::clone(&docs[h.index]),
            score: h.score,
        })
        .collect()
}

/// K = 0 asks for nothing and is a caller bug; K above the catalog size returns the whole
/// (filtered) catalog, ranked.
pub(crate) fn check_k(k: usize) -> Result<()> {
    if k == 0 {
        return Err(StylusError::InvalidArgument(
            "top-k must be at least 1".into(),
        ));
    }
    Ok(())
}

pub(crate) fn check_counts(docs: &[Arc<AdapterDoc>], vectors: &VectorMatrix) -> Result<()> {
    if docs.len() != vectors.len() {
        return Err(StylusError::InvalidArgument(format!(
            "{} documents but {} vectors",
            docs.len(),
            vectors.len()
        )));
    }
    Ok(())
}
