//! Reading diffusers parity fixtures (f32 tensors and int64 token ids in a safetensors file) and
//! the relative L2 error the parity tests assert on.

use std::path::PathBuf;

use safetensors::SafeTensors;
use stylus_diffusion::prompt_weights::PromptChunk;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The f32 tensor `name`, flat.
pub fn floats(tensors: &SafeTensors, name: &str) -> Vec<f32> {
    let view = tensors
        .tensor(name)
        .unwrap_or_else(|_| panic!("fixture tensor {name}"));
    assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
    view.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// The int64 token ids `name` as an unweighted prompt chunk.
pub fn chunk(tensors: &SafeTensors, name: &str) -> PromptChunk {
    let ids: Vec<u32> = tensors
        .tensor(name)
        .unwrap_or_else(|_| panic!("fixture tensor {name}"))
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
        .collect();
    PromptChunk {
        weights: vec![1.0; ids.len()],
        ids,
    }
}

/// `|ours - reference| / |reference|` (L2 norms, in f64).
pub fn relative_l2(ours: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(ours.len(), reference.len());
    let (mut diff, mut norm) = (0f64, 0f64);
    for (&a, &b) in ours.iter().zip(reference) {
        diff += (f64::from(a) - f64::from(b)).powi(2);
        norm += f64::from(b).powi(2);
    }
    (diff / norm).sqrt()
}
