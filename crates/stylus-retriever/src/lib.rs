//! Stylus retriever: stage 2 of Stylus, prompt embedding -> top-K adapter documents.
//!
//! - [`ExactRetriever`]: brute-force cosine top-K near memory bandwidth; the ground truth.
//! - [`HnswRetriever`]: an HNSW graph (`hnsw_rs`) with filters applied inside the search,
//!   persisted next to the StylusDocs store ([`persist`]).
//! - [`LexicalIndex`] (BM25) and [`HybridRetriever`]: dense + lexical rankings fused by RRF.
//! - [`LazyIndex`]: an index built on its first search (a store's vectors, read only when needed).
//! - [`eval`]: recall@k / MRR of a ranking against the adapter a prompt was made with.
//!
//! Both implement [`stylus_core::SearchIndex`], are `Send + Sync` and answer batches of queries.
//! Vectors are L2-normalized, so similarity is the dot product (cosine).

pub mod eval;
pub mod exact;
pub mod filter;
pub mod hnsw;
pub mod hybrid;
pub mod lazy;
pub mod lexical;
pub mod persist;
pub mod select;
pub mod sparse;
pub mod synthetic;
pub mod vectors;

pub use exact::ExactRetriever;
pub use hnsw::HnswRetriever;
pub use hybrid::{FusionConfig, HybridRetriever};
pub use lazy::LazyIndex;
pub use lexical::{LexicalConfig, LexicalIndex};
pub use select::Hit;
pub use sparse::SparseRetriever;
pub use vectors::VectorMatrix;
