//! Helpers shared by integration tests.

pub mod full_vocab;
