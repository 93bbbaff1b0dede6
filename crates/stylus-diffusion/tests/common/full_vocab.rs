//! The small random-weight SD checkpoint (`tests/fixtures/sd/tiny-ldm.safetensors`, CLIP
//! vocabulary 256) widened at test time to CLIP's 49,408 tokens, so real prompts tokenized with
//! the real CLIP tokenizer can run through it. Row `i` of the new token embedding is row
//! `i % 256` of the original; nothing else changes.

use std::path::{Path, PathBuf};

use safetensors::SafeTensors;
use safetensors::tensor::TensorView;

const TOKEN_EMBEDDING: &str =
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight";
const CLIP_VOCAB: usize = 49408;

/// Writes the widened copy of the single-file checkpoint `source` into `dir`; returns its path.
pub fn full_vocab_checkpoint(source: &Path, dir: &Path) -> PathBuf {
    let bytes = std::fs::read(source).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let embedding = tensors.tensor(TOKEN_EMBEDDING).unwrap();
    let [rows, width] = [embedding.shape()[0], embedding.shape()[1]];
    let row_bytes = width * embedding.dtype().bitsize() / 8;
    let widened: Vec<u8> = (0..CLIP_VOCAB)
        .flat_map(|i| {
            let row = i % rows;
            embedding.data()[row * row_bytes..(row + 1) * row_bytes].to_vec()
        })
        .collect();
    let mut views: Vec<(String, TensorView<'_>)> = tensors
        .tensors()
        .into_iter()
        .filter(|(name, _)| name != TOKEN_EMBEDDING)
        .collect();
    views.push((
        TOKEN_EMBEDDING.to_string(),
        TensorView::new(embedding.dtype(), vec![CLIP_VOCAB, width], &widened).unwrap(),
    ));
    let path = dir.join("tiny-full-vocab.safetensors");
    safetensors::serialize_to_file(views, None, &path).unwrap();
    path
}
