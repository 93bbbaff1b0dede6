//! Stylus retriever: stage 2 of Stylus, prompt embedding -> top-K adapter documents.
//!
//! - [`ExactRetriever`]: brute-force cosine top-K near memory bandwidth; the ground truth.
//! - [`HnswRetriever`]: an HNSW graph (`hnsw_rs`) with filters applied inside the search,
//!   persisted next to the StylusDocs store ([`persist`]).
//!
//! Both implement [`stylus_core::Retriever`], are `Send + Sync` and answer batches of queries.
//! Vectors are L2-normalized, so similarity is the dot product (cosine).

pub mod exact;
pub mod filter;
pub mod hnsw;
pub mod lexical;
pub mod persist;
pub mod select;
pub mod synthetic;
pub mod vectors;

pub use exact::ExactRetriever;
pub use hnsw::HnswRetriever;
pub use select::Hit;
pub use vectors::VectorMatrix;
