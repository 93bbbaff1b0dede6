//! One module per subcommand.

pub mod bench;
mod catalog;
pub mod eval;
pub mod generate;
pub mod index;
pub mod info;
pub mod merge;
pub mod retrieve;
pub mod select;

use stylus_core::StylusError;

/// A tokio runtime for the async pipeline stages.
pub fn runtime() -> Result<tokio::runtime::Runtime, StylusError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| StylusError::io("<tokio runtime>", e))
}
