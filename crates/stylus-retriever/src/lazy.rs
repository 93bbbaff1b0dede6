//! A search index built when first searched: a store's vector index, which a BM25-first
//! retrieval of a lexical store reads only when BM25 finds too few candidates, so opening the
//! store does not read, check and index its vectors for searches that never use them.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use stylus_core::{
    Candidate, ExplainedCandidate, Query, Result, RetrievalFilter, SearchIndex, StylusError,
};

type Build = Box<dyn FnOnce() -> Result<Arc<dyn SearchIndex>> + Send>;

/// A [`SearchIndex`] that runs its `build` on the first search (once, whichever thread gets
/// there first) and searches what it built from then on. A failed build is reported to that
/// search and, as a store error naming `source`, to every later one.
pub struct LazyIndex {
    dim: usize,
    len: usize,
    source: PathBuf,
    build: Mutex<Option<Build>>,
    built: OnceLock<std::result::Result<Arc<dyn SearchIndex>, String>>,
}

impl std::fmt::Debug for LazyIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyIndex")
            .field("dim", &self.dim)
            .field("len", &self.len)
            .field("source", &self.source)
            .field("built", &self.built.get().map(|b| b.is_ok()))
            .finish()
    }
}

impl LazyIndex {
    /// An index of `len` documents of `dim` dimensions, built from `source` by `build`.
    pub fn new(
        dim: usize,
        len: usize,
        source: impl Into<PathBuf>,
        build: impl FnOnce() -> Result<Arc<dyn SearchIndex>> + Send + 'static,
    ) -> Self {
        Self {
            dim,
            len,
            source: source.into(),
            build: Mutex::new(Some(Box::new(build))),
            built: OnceLock::new(),
        }
    }

    /// Whether the first search has built the index (successfully or not).
    pub fn is_built(&self) -> bool {
        self.built.get().is_some()
    }

    fn index(&self) -> Result<&Arc<dyn SearchIndex>> {
        if self.built.get().is_none() {
            // Searches that arrive while the first one builds wait for it here.
            let mut build = self.build.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(build) = build.take() {
                let result = build();
                let outcome = result.as_ref().map(Arc::clone).map_err(|e| e.to_string());
                let _ = self.built.set(outcome);
                result?;
            }
        }
        match self.built.get() {
            Some(Ok(index)) => Ok(index),
            Some(Err(message)) => Err(StylusError::store(&self.source, message.clone())),
            None => Err(StylusError::store(
                &self.source,
                "the index was not built: its builder panicked",
            )),
        }
    }
}

impl SearchIndex for LazyIndex {
    fn dim(&self) -> usize {
        self.dim
    }

    fn len(&self) -> usize {
        self.len
    }

    fn retrieve(
        &self,
        query: Query<'_>,
        k: usize,
        filter: &RetrievalFilter,
    ) -> Result<Vec<Candidate>> {
        self.index()?.retrieve(query, k, filter)
    }

    fn retrieve_explained(
        &self,
        query: Query<'_>,
        k: usize,
        filter: &RetrievalFilter,
    ) -> Result<Vec<ExplainedCandidate>> {
        self.index()?.retrieve_explained(query, k, filter)
    }

    fn retrieve_batch(
        &self,
        queries: &[Query<'_>],
        k: usize,
        filter: &RetrievalFilter,
    ) -> Result<Vec<Vec<Candidate>>> {
        self.index()?.retrieve_batch(queries, k, filter)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::ExactRetriever;
    use crate::synthetic::{ClusteredVectors, docs};

    #[test]
    fn builds_once_on_the_first_search_and_then_searches_what_it_built() {
        let vectors = ClusteredVectors::new(8, 3, 0.1, 1);
        let exact = Arc::new(ExactRetriever::new(docs(50), vectors.matrix(50, 2)).unwrap());
        let builds = Arc::new(AtomicUsize::new(0));
        let lazy = LazyIndex::new(8, 50, "store/vectors", {
            let (exact, builds) = (Arc::clone(&exact), Arc::clone(&builds));
            move || {
                builds.fetch_add(1, Ordering::SeqCst);
                Ok(exact as Arc<dyn SearchIndex>)
            }
        });
        assert!(!lazy.is_built());
        let query = vectors.queries(1, 3).remove(0);
        let filter = RetrievalFilter::default();
        let ids = |c: Vec<Candidate>| {
            c.into_iter()
                .map(|c| c.doc.id().clone())
                .collect::<Vec<_>>()
        };
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| lazy.retrieve(Query::vector(&query), 5, &filter).unwrap());
            }
        });
        assert_eq!(builds.load(Ordering::SeqCst), 1);
        assert_eq!(
            ids(lazy.retrieve(Query::vector(&query), 5, &filter).unwrap()),
            ids(exact.retrieve(Query::vector(&query), 5, &filter).unwrap())
        );
    }

    #[test]
    fn a_failed_build_is_an_error_for_that_search_and_every_later_one() {
        let lazy = LazyIndex::new(4, 2, "store/vectors.sparse.safetensors", || {
            Err(StylusError::store(
                "store/vectors.sparse.safetensors",
                "crc32 1 does not match 2",
            ))
        });
        let filter = RetrievalFilter::default();
        for _ in 0..2 {
            let err = lazy
                .retrieve(Query::vector(&[0.0; 4]), 1, &filter)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("vectors.sparse.safetensors") && err.contains("crc32"),
                "{err}"
            );
        }
        assert!(lazy.is_built());
    }
}
