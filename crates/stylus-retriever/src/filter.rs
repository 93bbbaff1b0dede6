//! Filters as per-document masks, computed once per distinct filter and reused by every query.

use std::sync::{Arc, Mutex};

use stylus_core::{AdapterDoc, RetrievalFilter};

/// Which documents a filter lets through.
#[derive(Debug)]
pub struct FilterMask {
    accepted: Vec<bool>,
    count: usize,
}

impl FilterMask {
    fn new(docs: &[Arc<AdapterDoc>], filter: &RetrievalFilter) -> Self {
        let accepted: Vec<bool> = docs.iter().map(|d| filter.accepts(d)).collect();
        let count = accepted.iter().filter(|&&a| a).count();
        Self { accepted, count }
    }

    /// True when document `i` passes.
    #[inline]
    pub fn accepts(&self, i: usize) -> bool {
        self.accepted[i]
    }

    /// Number of documents that pass.
    pub fn count(&self) -> usize {
        self.count
    }
}

/// Remembers the mask of the last filter seen. Queries of one application nearly always share one
/// filter, and `RetrievalFilter::accepts` lower-cases tags, so evaluating it per document per
/// query would cost more than the search itself.
#[derive(Debug, Default)]
pub struct FilterCache {
    last: Mutex<Option<(RetrievalFilter, Arc<FilterMask>)>>,
}

impl FilterCache {
    /// The mask of `filter` over `docs`, or `None` when every document passes (the scan then
    /// skips the per-row check).
    pub fn mask(
        &self,
        docs: &[Arc<AdapterDoc>],
        filter: &RetrievalFilter,
    ) -> Option<Arc<FilterMask>> {
        if filter.is_pass_all() {
            return None;
        }
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mask = match last.as_ref() {
            Some((f, mask)) if f == filter => Arc::clone(mask),
            _ => {
                let mask = Arc::new(FilterMask::new(docs, filter));
                *last = Some((filter.clone(), Arc::clone(&mask)));
                mask
            }
        };
        (mask.count() < docs.len()).then_some(mask)
    }
}
