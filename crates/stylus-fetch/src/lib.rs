//! Stylus fetch: the files Stylus selects, downloaded into a verified, bounded local cache.
//!
//! - [`AdapterCache`]: a content-addressed store (sha256) of LoRA files under the stylus cache
//!   folder with an index (Civitai model/version id, file name = A1111 alias, size, last use), a
//!   size limit with least-recently-used eviction that never evicts a pinned file, and
//!   list/prune/verify.
//! - [`Fetcher`]: downloads Civitai `downloadUrl`s into it (API key, redirects, `Range` resume,
//!   bounded concurrency, retries with backoff honouring `Retry-After`, progress bars), checking
//!   size, content (no HTML/JSON error bodies, no pickles), sha256 and base model first.
//! - [`hub`]: base checkpoints named `hf:org/name[@revision]`, resolved in (and downloaded into)
//!   the standard Hugging Face hub cache.
//! - [`FetchingLocator`]: the locator of `generate --fetch` (LoRA folder, then cache, then
//!   download), pinning what it hands out.
//! - [`fetch_missing`]: what `generate --fetch` calls for the adapters the LoRA folder lacks.
//!
//! Every error is a typed [`FetchError`] naming the adapter.

pub mod cache;
pub mod download;
pub mod error;
pub mod hub;
pub mod locator;
pub mod plan;

pub use cache::{AdapterCache, CacheEntry, Pin, PruneReport, VerifyProblem};
pub use download::{AuthStyle, FetchConfig, FetchRequest, Fetched, Fetcher, check_lora};
pub use error::FetchError;
pub use hub::{HubCheckpoint, HubOptions, resolve_checkpoint};
pub use locator::FetchingLocator;
pub use plan::{fetch_missing, parse_spec, plan_adapters};
