//! Seeded synthetic catalogs for tests and benchmarks: clustered, normalized vectors shaped like
//! text embeddings (documents about the same subject share a direction), and documents to go
//! with them.

use std::sync::Arc;

use stylus_core::rng::SplitMix64;
use stylus_core::{AdapterCard, AdapterDoc, AdapterId, BaseModel, Category};

use crate::VectorMatrix;

/// Draws vectors around a fixed set of random cluster centers.
#[derive(Debug, Clone)]
pub struct ClusteredVectors {
    dim: usize,
    centers: Vec<Vec<f32>>,
    /// Per-coordinate noise relative to a center's; 1.0 gives cosine ~0.5 within a cluster and
    /// ~0 across clusters, roughly what sentence embeddings of related cards show.
    spread: f32,
}

impl ClusteredVectors {
    /// `clusters` centers in `dim` dimensions, drawn from `seed`.
    pub fn new(dim: usize, clusters: usize, spread: f32, seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed);
        let centers = (0..clusters.max(1))
            .map(|_| (0..dim).map(|_| rng.normal() as f32).collect())
            .collect();
        Self {
            dim,
            centers,
            spread,
        }
    }

    /// `n` L2-normalized vectors, row-major, drawn from `seed`.
    pub fn sample(&self, n: usize, seed: u64) -> Vec<f32> {
        let mut rng = SplitMix64::new(seed);
        let mut data = Vec::with_capacity(n * self.dim);
        for _ in 0..n {
            let center = &self.centers[rng.below(self.centers.len())];
            let start = data.len();
            data.extend(center.iter().map(|c| c + self.spread * rng.normal() as f32));
            let row = &mut data[start..];
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            row.iter_mut().for_each(|x| *x /= norm);
        }
        data
    }

    /// `n` vectors as a matrix.
    pub fn matrix(&self, n: usize, seed: u64) -> VectorMatrix {
        VectorMatrix::new(self.dim, self.sample(n, seed))
            .expect("sampled rows are finite and normalized")
    }

    /// `n` vectors as separate queries.
    pub fn queries(&self, n: usize, seed: u64) -> Vec<Vec<f32>> {
        self.sample(n, seed)
            .chunks_exact(self.dim)
            .map(<[f32]>::to_vec)
            .collect()
    }
}

/// `n` documents with Civitai ids `1..=n`. Every 10th is nsfw, every 7th is for SDXL, and
/// categories cycle, so filters have something to do.
pub fn docs(n: usize) -> Vec<Arc<AdapterDoc>> {
    (0..n)
        .map(|i| {
            let mut card = AdapterCard::new(
                AdapterId::Civitai(i as u64 + 1),
                format!("synthetic adapter {}", i + 1),
                "LORA",
            );
            card.nsfw = i % 10 == 9;
            card.base_model = Some(if i % 7 == 6 {
                BaseModel::Sdxl
            } else {
                BaseModel::Sd1
            });
            card.tags = vec![format!("tag{}", i % 5)];
            let category = Category::ALL[i % Category::ALL.len()];
            Arc::new(AdapterDoc {
                description: card.title.clone(),
                recommended_weight: 0.8,
                category,
                embedding_text: card.title.clone(),
                refiner: "synthetic".into(),
                card,
            })
        })
        .collect()
}
