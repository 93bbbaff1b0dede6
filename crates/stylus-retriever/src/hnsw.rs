//! `HnswRetriever`: approximate top-K on an `hnsw_rs` graph, exact where the graph cannot be
//! trusted to return K results.
//!
//! Vectors are L2-normalized, so the graph uses `DistDot` (1 - dot, about twice as fast as
//! `DistCosine`, which renormalizes on every evaluation). Filters never cost result slots:
//! - a filter that passes at least half the catalog: an unfiltered walk for enough extra
//!   neighbours to cover the rejected share, rejected ones dropped (`hnsw_rs`'s filtered walk is
//!   much slower when nearly everything passes);
//! - a more selective filter: the filter runs inside the graph search (`search_filter`);
//! - a filter that passes at most a tenth of the catalog (or barely more than K), or any walk that
//!   returns fewer than K matches: the exact scan over the accepted documents.
//!
//! So a filter never leaves fewer than K results when K documents match.

use std::sync::Arc;

use hnsw_rs::prelude::{DistDot, Hnsw, Neighbour};
use rayon::prelude::*;
use stylus_core::{
    AdapterDoc, Candidate, HnswConfig, Query, Result, RetrievalFilter, SearchIndex, StylusError,
};

use crate::exact::{ExactRetriever, check_k, to_candidates};
use crate::filter::FilterMask;
use crate::select::{Hit, rank_order};
use crate::vectors::{VectorMatrix, normalized_query};

/// Layers of the graph. `hnsw_rs` can only dump a graph built with exactly its maximum of 16.
pub(crate) const MAX_LAYER: usize = 16;

/// The graph type: f32 vectors, dot distance. `'static` because graphs we build own their data
/// and graphs we reload come from a loader kept alive for the life of the program
/// (see `persist::load_graph`).
pub(crate) type Graph = Hnsw<'static, f32, DistDot>;

/// HNSW top-K over L2-normalized document vectors with an exact fallback.
pub struct HnswRetriever {
    pub(crate) exact: ExactRetriever,
    pub(crate) graph: Graph,
    pub(crate) config: HnswConfig,
    pub(crate) embedder_id: String,
}

impl std::fmt::Debug for HnswRetriever {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HnswRetriever")
            .field("documents", &self.exact.docs().len())
            .field("dim", &self.exact.vectors().dim())
            .field("config", &self.config)
            .field("embedder_id", &self.embedder_id)
            .finish_non_exhaustive()
    }
}

impl HnswRetriever {
    /// Builds the graph over `vectors` (one per document, same order), inserting in parallel.
    /// `embedder_id` is remembered so a saved index is never reused with another embedder.
    pub fn build(
        docs: Vec<Arc<AdapterDoc>>,
        vectors: VectorMatrix,
        embedder_id: impl Into<String>,
        config: HnswConfig,
    ) -> Result<Self> {
        check_config(&config)?;
        let exact = ExactRetriever::new(docs, vectors)?;
        let vectors = exact.vectors();
        let mut graph = Graph::new(
            config.max_connections,
            vectors.len().max(1),
            MAX_LAYER,
            config.ef_construction,
            DistDot,
        );
        let rows: Vec<(&[f32], usize)> = (0..vectors.len()).map(|i| (vectors.row(i), i)).collect();
        graph.parallel_insert_slice(&rows);
        graph.set_searching_mode(true);
        Ok(Self {
            exact,
            graph,
            config,
            embedder_id: embedder_id.into(),
        })
    }

    /// The exact retriever over the same documents (the fallback, and the recall reference).
    pub fn exact(&self) -> &ExactRetriever {
        &self.exact
    }

    pub fn config(&self) -> &HnswConfig {
        &self.config
    }

    /// The embedder the vectors came from.
    pub fn embedder_id(&self) -> &str {
        &self.embedder_id
    }

    /// Changes the search breadth (ef); the graph stays as built.
    pub fn set_ef_search(&mut self, ef_search: usize) {
        self.config.ef_search = ef_search;
    }

    /// The `k` most similar documents passing `filter`, best first (all of them, ranked, when
    /// fewer than `k` pass). `k` must be at least 1.
    pub fn search(&self, query: &[f32], k: usize, filter: &RetrievalFilter) -> Result<Vec<Hit>> {
        Ok(self.search_batch(&[query], k, filter)?.remove(0))
    }

    /// [`Self::search`] for many queries, in parallel.
    pub fn search_batch<Q: AsRef<[f32]>>(
        &self,
        queries: &[Q],
        k: usize,
        filter: &RetrievalFilter,
    ) -> Result<Vec<Vec<Hit>>> {
        check_k(k)?;
        // More than every document is every document (a huge K allocates nothing more).
        let k = k.min(self.exact.docs().len().max(1));
        let dim = self.exact.vectors().dim();
        let queries = queries
            .iter()
            .map(|q| normalized_query(q.as_ref(), dim))
            .collect::<Result<Vec<_>>>()?;
        let mask = self.exact.filter_mask(filter);
        let mask = mask.as_deref();
        if self.use_exact(k, mask) {
            return Ok(self.exact.search_normalized(&queries, k, mask));
        }
        Ok(queries
            .par_iter()
            .map(|q| self.graph_search(q, k, mask))
            .collect())
    }

    /// Exact when the graph would have to wade through mostly rejected documents, or when K is a
    /// large part of what passes (a graph walk rarely reaches that many).
    fn use_exact(&self, k: usize, mask: Option<&FilterMask>) -> bool {
        let total = self.exact.docs().len();
        let accepted = mask.map_or(total, FilterMask::count);
        accepted <= (total / 10).max(4 * k)
    }

    fn graph_search(&self, query: &[f32], k: usize, mask: Option<&FilterMask>) -> Vec<Hit> {
        let total = self.exact.docs().len();
        let accepted = mask.map_or(total, FilterMask::count);
        let hits = match mask {
            None => self.walk(query, k, self.config.ef_search.max(k), None),
            Some(mask) if accepted * 2 >= total => {
                // A permissive filter: `hnsw_rs`'s filtered walk keeps exploring every candidate
                // once it has ef results (measured 6x slower at 75K), so walk unfiltered for
                // enough extra neighbours to cover the rejected share and drop those; the
                // filtered walk below remains the fallback.
                let wanted = (k * total).div_ceil(accepted) + k / 10 + 8;
                let ef = (self.config.ef_search * total)
                    .div_ceil(accepted)
                    .max(wanted);
                let hits = self.walk(query, wanted, ef, Some(mask));
                if hits.len() >= k {
                    hits
                } else {
                    self.walk_filtered(query, k, mask)
                }
            }
            Some(mask) => self.walk_filtered(query, k, mask),
        };
        if hits.len() < k.min(accepted) {
            // The walk ran dry (a disconnected corner of the graph, or a filter that rejects a
            // whole region): the exact scan keeps the promise of K results.
            return self
                .exact
                .search_normalized(&[query.to_vec()], k, mask)
                .remove(0);
        }
        let mut hits = hits;
        hits.sort_unstable_by(rank_order);
        hits.truncate(k);
        hits
    }

    /// The `wanted` nearest neighbours of an unfiltered walk of breadth `ef`, minus those `mask`
    /// rejects.
    fn walk(&self, query: &[f32], wanted: usize, ef: usize, mask: Option<&FilterMask>) -> Vec<Hit> {
        let neighbours = self.graph.search(query, wanted, ef.max(wanted));
        to_hits(&neighbours, mask)
    }

    /// The filter applied inside the walk: rejected documents never take a result slot.
    fn walk_filtered(&self, query: &[f32], k: usize, mask: &FilterMask) -> Vec<Hit> {
        let ef = self.config.ef_search.max(k);
        let accepts = |id: &usize| mask.accepts(*id);
        let neighbours = self.graph.search_filter(query, k, ef, Some(&accepts));
        to_hits(&neighbours, Some(mask))
    }
}

/// Graph neighbours as hits (score = 1 - dot distance), without documents `mask` rejects.
fn to_hits(neighbours: &[Neighbour], mask: Option<&FilterMask>) -> Vec<Hit> {
    neighbours
        .iter()
        .filter(|n| mask.is_none_or(|m| m.accepts(n.d_id)))
        .map(|n| Hit {
            index: n.d_id,
            score: 1.0 - n.distance,
        })
        .collect()
}

impl SearchIndex for HnswRetriever {
    fn dim(&self) -> usize {
        self.exact.vectors().dim()
    }

    fn len(&self) -> usize {
        self.exact.docs().len()
    }

    fn retrieve(
        &self,
        query: Query<'_>,
        k: usize,
        filter: &RetrievalFilter,
    ) -> Result<Vec<Candidate>> {
        Ok(to_candidates(
            self.exact.docs(),
            self.search(query.vector, k, filter)?,
        ))
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
            .map(|hits| to_candidates(self.exact.docs(), hits))
            .collect())
    }
}

/// `hnsw_rs` exits the process on more than 256 links and misbehaves on zero; refuse both here.
pub(crate) fn check_config(config: &HnswConfig) -> Result<()> {
    if !(2..=255).contains(&config.max_connections) {
        return Err(StylusError::InvalidArgument(format!(
            "retriever.hnsw.max_connections must be in 2..=255, got {}",
            config.max_connections
        )));
    }
    if config.ef_construction == 0 || config.ef_search == 0 {
        return Err(StylusError::InvalidArgument(
            "retriever.hnsw.ef_construction and ef_search must be at least 1".into(),
        ));
    }
    Ok(())
}
