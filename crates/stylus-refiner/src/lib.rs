//! stylus-refiner: the offline half of Stylus. It reads adapter model cards (Civitai JSON, local
//! LoRA folders), filters them as the paper does, refines them into documents (description,
//! recommended weight, category), embeds them and writes the StylusDocs store.

#[cfg(feature = "bert")]
pub mod bert;
pub mod bundled;
pub mod card_refiner;
pub mod civitai;
#[cfg(feature = "http")]
pub mod civitai_api;
pub mod embedder_id;
pub mod filters;
pub mod html;
pub mod indexer;
pub mod lexical;
pub mod locator;
pub mod lora_folder;
#[cfg(feature = "http")]
pub mod openai_embedder;
pub mod postings_file;
pub mod store;
#[cfg(feature = "http")]
pub mod vlm_refiner;
