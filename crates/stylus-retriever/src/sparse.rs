//! [`SparseRetriever`]: exact top-K for vectors that are mostly zeros, like the lexical
//! embedder's hashed TF-IDF (a prompt has a few dozen non-zero buckets out of 4096).
//!
//! An inverted index maps each dimension to the documents with a non-zero value there; a query
//! only walks the postings of its own non-zero dimensions, so the cost grows with the postings
//! touched, not with `documents x dim` like a dense scan or a graph walk at 4096 dims. The scores
//! are the same dot products as [`crate::ExactRetriever`]'s (f32 sums in another order).
//!
//! The lists are built in memory ([`SparseRetriever::new`], [`SparseRetriever::from_csr`]) or
//! come from elsewhere ([`SparseRetriever::from_lists`]: a store's postings file, whose lists are
//! read when a query first touches them).

use std::sync::Arc;

use stylus_core::{
    AdapterDoc, Candidate, PostingLists, Query, Result, RetrievalFilter, SearchIndex, StylusError,
};

use crate::exact::check_k;

/// Exact sparse dot-product search (see the module docs).
#[derive(Debug, Clone)]
pub struct SparseRetriever {
    docs: Vec<Arc<AdapterDoc>>,
    dim: usize,
    /// `(document, value)` for every document whose dimension `d` is non-zero, by `d`.
    postings: Arc<dyn PostingLists>,
}

/// Inverted lists held in memory.
#[derive(Debug)]
struct MemoryPostings {
    docs: usize,
    lists: Vec<Vec<(u32, f32)>>,
}

impl PostingLists for MemoryPostings {
    fn dim(&self) -> usize {
        self.lists.len()
    }

    fn docs(&self) -> usize {
        self.docs
    }

    fn list(&self, d: usize) -> Result<&[(u32, f32)]> {
        self.lists.get(d).map(Vec::as_slice).ok_or_else(|| {
            StylusError::InvalidArgument(format!(
                "sparse index: dimension {d} of {}",
                self.lists.len()
            ))
        })
    }
}

impl SparseRetriever {
    fn in_memory(docs: Vec<Arc<AdapterDoc>>, dim: usize, lists: Vec<Vec<(u32, f32)>>) -> Self {
        let postings = Arc::new(MemoryPostings {
            docs: docs.len(),
            lists,
        });
        Self {
            docs,
            dim,
            postings,
        }
    }

    /// Searches lists made elsewhere (a store's postings file) over `docs`, in the lists'
    /// document numbering.
    pub fn from_lists(docs: Vec<Arc<AdapterDoc>>, postings: Arc<dyn PostingLists>) -> Result<Self> {
        if postings.docs() != docs.len() || postings.dim() == 0 {
            return Err(StylusError::InvalidArgument(format!(
                "sparse index: lists over {} documents of {} dimensions, {} documents given",
                postings.docs(),
                postings.dim(),
                docs.len()
            )));
        }
        Ok(Self {
            dim: postings.dim(),
            docs,
            postings,
        })
    }

    /// Indexes `vectors` (row-major, `docs.len()` rows of `dim` values).
    pub fn new(docs: Vec<Arc<AdapterDoc>>, dim: usize, vectors: &[f32]) -> Result<Self> {
        if dim == 0 || vectors.len() != docs.len() * dim {
            return Err(StylusError::Dimension {
                what: format!("sparse index of {} documents", docs.len()),
                expected: docs.len() * dim,
                got: vectors.len(),
            });
        }
        if docs.len() > u32::MAX as usize {
            return Err(StylusError::InvalidArgument(
                "sparse index: more than 2^32 documents".into(),
            ));
        }
        let mut postings = vec![Vec::new(); dim];
        for (doc, row) in vectors.chunks_exact(dim).enumerate() {
            for (d, &value) in row.iter().enumerate() {
                if value != 0.0 {
                    postings[d].push((doc as u32, value));
                }
            }
        }
        Ok(Self::in_memory(docs, dim, postings))
    }
}

impl SparseRetriever {
    /// Indexes vectors given in CSR form: row `i`'s non-zeros are `values[indptr[i]..
    /// indptr[i + 1]]` at the dimensions `indices[..]` of the same range. Builds the same index
    /// as [`Self::new`] on the dense rows, without ever holding them.
    pub fn from_csr(
        docs: Vec<Arc<AdapterDoc>>,
        dim: usize,
        indptr: &[u64],
        indices: &[u32],
        values: &[f32],
    ) -> Result<Self> {
        let bad = |message: String| Err(StylusError::InvalidArgument(message));
        if dim == 0 || indptr.len() != docs.len() + 1 || indices.len() != values.len() {
            return bad(format!(
                "sparse index: {} documents, {} row offsets, {} indices, {} values",
                docs.len(),
                indptr.len(),
                indices.len(),
                values.len()
            ));
        }
        if docs.len() > u32::MAX as usize {
            return bad("sparse index: more than 2^32 documents".into());
        }
        let mut counts = vec![0usize; dim];
        for &d in indices {
            match counts.get_mut(d as usize) {
                Some(c) => *c += 1,
                None => return bad(format!("sparse index: dimension {d} >= {dim}")),
            }
        }
        let mut postings: Vec<Vec<(u32, f32)>> =
            counts.iter().map(|&c| Vec::with_capacity(c)).collect();
        for (doc, pair) in indptr.windows(2).enumerate() {
            let (a, b) = (pair[0] as usize, pair[1] as usize);
            if a > b || b > values.len() {
                return bad(format!("sparse index: bad row offsets at row {doc}"));
            }
            for (&d, &value) in indices[a..b].iter().zip(&values[a..b]) {
                if value != 0.0 {
                    postings[d as usize].push((doc as u32, value));
                }
            }
        }
        Ok(Self::in_memory(docs, dim, postings))
    }
}

impl SearchIndex for SparseRetriever {
    fn dim(&self) -> usize {
        self.dim
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
        check_k(k)?;
        let query = query.vector;
        if query.len() != self.dim {
            return Err(StylusError::Dimension {
                what: "sparse index query".into(),
                expected: self.dim,
                got: query.len(),
            });
        }
        let mut scores = vec![0f32; self.docs.len()];
        let mut touched = vec![false; self.docs.len()];
        let mut hits: Vec<u32> = Vec::new();
        for (d, &q) in query.iter().enumerate() {
            if q == 0.0 {
                continue;
            }
            for &(doc, value) in self.postings.list(d)? {
                let i = doc as usize;
                if !touched[i] {
                    touched[i] = true;
                    hits.push(doc);
                }
                scores[i] += q * value;
            }
        }
        let pass_all = filter.is_pass_all();
        let accepts = |i: usize| pass_all || filter.accepts(&self.docs[i]);
        // Best first; ties by document order, so results are deterministic.
        let order = |a: &u32, b: &u32| {
            scores[*b as usize]
                .total_cmp(&scores[*a as usize])
                .then(a.cmp(b))
        };
        // The filter is checked lazily, best first: a common query word touches most documents,
        // and checking all of them would cost more than the search. Take the best `2k`, keep those
        // that pass, and widen while too few do. Only positive scores here: every document the
        // query does not touch scores 0 and ranks above negative ones.
        let mut out: Vec<Candidate> = Vec::with_capacity(k.min(hits.len()));
        let mut window = (2 * k).min(hits.len());
        let mut checked = 0;
        let mut reached_nonpositive = false;
        loop {
            if window < hits.len() {
                hits[checked..].select_nth_unstable_by(window - checked - 1, order);
            }
            hits[checked..window].sort_unstable_by(order);
            for &i in &hits[checked..window] {
                let score = scores[i as usize];
                if score <= 0.0 {
                    reached_nonpositive = true;
                    break;
                }
                if out.len() < k && accepts(i as usize) {
                    out.push(Candidate {
                        doc: self.docs[i as usize].clone(),
                        score,
                    });
                }
            }
            checked = window;
            if out.len() >= k || reached_nonpositive || window == hits.len() {
                break;
            }
            window = (window * 2).min(hits.len());
        }
        // Then the zero scores (untouched documents, or sums that cancelled), in document order.
        for (i, doc) in self.docs.iter().enumerate() {
            if out.len() == k {
                break;
            }
            if (!touched[i] || scores[i] == 0.0) && accepts(i) {
                out.push(Candidate {
                    doc: doc.clone(),
                    score: 0.0,
                });
            }
        }
        // Then the negative ones, best first.
        if out.len() < k {
            let mut negative: Vec<u32> = hits
                .iter()
                .copied()
                .filter(|&i| scores[i as usize] < 0.0)
                .collect();
            negative.sort_unstable_by(order);
            for i in negative {
                if out.len() == k {
                    break;
                }
                if accepts(i as usize) {
                    out.push(Candidate {
                        doc: self.docs[i as usize].clone(),
                        score: scores[i as usize],
                    });
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use stylus_core::{AdapterCard, AdapterId, Category};

    use super::*;
    use crate::synthetic::ClusteredVectors;
    use crate::{ExactRetriever, VectorMatrix};

    fn doc(id: u64, nsfw: bool) -> Arc<AdapterDoc> {
        let mut card = AdapterCard::new(AdapterId::Civitai(id), format!("doc {id}"), "LORA");
        card.nsfw = nsfw;
        Arc::new(AdapterDoc {
            card,
            description: String::new(),
            recommended_weight: 0.8,
            category: Category::Concept,
            embedding_text: String::new(),
            refiner: "test".into(),
        })
    }

    /// Sparse vectors: dense clustered ones with most entries zeroed, renormalized.
    fn sparse_rows(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut v = ClusteredVectors::new(dim, 20, 1.0, seed).sample(n, seed + 1);
        for row in v.chunks_mut(dim) {
            for (d, x) in row.iter_mut().enumerate() {
                if !(d * 7 + (*x * 1e4).abs() as usize).is_multiple_of(9) {
                    *x = 0.0;
                }
            }
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            row.iter_mut().for_each(|x| *x /= norm);
        }
        v
    }

    #[test]
    fn same_ranking_as_the_exact_scan_with_filters() {
        let (n, dim) = (500, 64);
        let vectors = sparse_rows(n, dim, 3);
        // Four in five are nsfw: the best 2k rarely hold k that pass, so the window must widen.
        let docs: Vec<Arc<AdapterDoc>> = (0..n).map(|i| doc(i as u64, i % 5 != 0)).collect();
        let sparse = SparseRetriever::new(docs.clone(), dim, &vectors).unwrap();
        let exact =
            ExactRetriever::new(docs, VectorMatrix::new(dim, vectors.clone()).unwrap()).unwrap();
        let filter = RetrievalFilter::default(); // drops the nsfw four fifths
        for q in 0..10 {
            let query = &vectors[q * dim..(q + 1) * dim];
            let a = sparse.retrieve(Query::vector(query), 50, &filter).unwrap();
            let b = exact.retrieve(Query::vector(query), 50, &filter).unwrap();
            assert_eq!(a.len(), 50);
            assert!(a.iter().all(|c| !c.doc.card.nsfw));
            for (x, y) in a.iter().zip(&b) {
                assert!(
                    (x.score - y.score).abs() < 1e-5,
                    "{} vs {}",
                    x.score,
                    y.score
                );
            }
            let ids_a: Vec<_> = a.iter().map(|c| c.doc.id().clone()).collect();
            let ids_b: Vec<_> = b.iter().map(|c| c.doc.id().clone()).collect();
            // Equal scores may swap places between the two; compare as sets on the strict top.
            assert_eq!(ids_a[..10], ids_b[..10]);
        }
    }

    #[test]
    fn fills_to_k_with_unrelated_documents_and_checks_input() {
        let dim = 4;
        let vectors = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0];
        let docs: Vec<Arc<AdapterDoc>> = (0..3).map(|i| doc(i, false)).collect();
        let sparse = SparseRetriever::new(docs.clone(), dim, &vectors).unwrap();
        let all = RetrievalFilter {
            allow_nsfw: true,
            ..RetrievalFilter::default()
        };
        let got = sparse
            .retrieve(Query::vector(&[0.0, 0.0, 1.0, 0.0]), 3, &all)
            .unwrap();
        let ids: Vec<_> = got.iter().map(|c| c.doc.id().clone()).collect();
        assert_eq!(
            ids,
            [
                AdapterId::Civitai(2),
                AdapterId::Civitai(0),
                AdapterId::Civitai(1)
            ]
        );
        assert_eq!(got[0].score, 1.0);
        assert_eq!(got[1].score, 0.0);
        assert!(sparse.retrieve(Query::vector(&[0.0; 3]), 1, &all).is_err());
        assert!(sparse.retrieve(Query::vector(&[0.0; 4]), 0, &all).is_err());
        assert!(SparseRetriever::new(docs, dim, &vectors[..5]).is_err());
    }

    /// Lists from elsewhere that fail on one dimension, as a damaged store file does.
    #[derive(Debug)]
    struct OneBadList {
        lists: MemoryPostings,
        bad: usize,
    }

    impl PostingLists for OneBadList {
        fn dim(&self) -> usize {
            self.lists.dim()
        }
        fn docs(&self) -> usize {
            self.lists.docs()
        }
        fn list(&self, d: usize) -> Result<&[(u32, f32)]> {
            if d == self.bad {
                return Err(StylusError::store("vectors.postings", "dimension damaged"));
            }
            self.lists.list(d)
        }
    }

    #[test]
    fn lists_from_elsewhere_rank_as_the_built_index_and_their_errors_surface() {
        let (n, dim) = (300, 32);
        let vectors = sparse_rows(n, dim, 5);
        let docs: Vec<Arc<AdapterDoc>> = (0..n).map(|i| doc(i as u64, i % 3 == 0)).collect();
        let built = SparseRetriever::new(docs.clone(), dim, &vectors).unwrap();
        let lists = MemoryPostings {
            docs: n,
            lists: (0..dim)
                .map(|d| built.postings.list(d).unwrap().to_vec())
                .collect(),
        };
        // A dimension the query of row 2 touches.
        let bad = (0..dim).position(|d| vectors[2 * dim + d] != 0.0).unwrap();
        let elsewhere =
            SparseRetriever::from_lists(docs.clone(), Arc::new(OneBadList { lists, bad: dim }))
                .unwrap();
        let filter = RetrievalFilter::default();
        for q in 0..8 {
            let query = Query::vector(&vectors[q * dim..(q + 1) * dim]);
            assert_eq!(
                elsewhere.retrieve(query, 40, &filter).unwrap(),
                built.retrieve(query, 40, &filter).unwrap()
            );
        }
        // A query touching the damaged dimension is an error, not a partial ranking.
        let lists = MemoryPostings {
            docs: n,
            lists: (0..dim)
                .map(|d| built.postings.list(d).unwrap().to_vec())
                .collect(),
        };
        let damaged =
            SparseRetriever::from_lists(docs.clone(), Arc::new(OneBadList { lists, bad })).unwrap();
        let err = damaged
            .retrieve(Query::vector(&vectors[2 * dim..3 * dim]), 10, &filter)
            .unwrap_err();
        assert!(err.to_string().contains("vectors.postings"), "{err}");
        // Lists over another number of documents are refused.
        let lists = MemoryPostings {
            docs: n + 1,
            lists: vec![vec![]; dim],
        };
        assert!(SparseRetriever::from_lists(docs, Arc::new(lists)).is_err());
    }
}
