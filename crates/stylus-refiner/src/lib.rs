//! stylus-refiner

pub mod openai_embedder;
