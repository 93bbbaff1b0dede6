//! Shared helpers of the LoRA tests: the tiny SD fixture model, its target table, base weights
//! read by name, and relative errors.

#![allow(dead_code)] // each test file uses a subset

use std::path::{Path, PathBuf};

use burn::tensor::{Tensor, TensorData};
use stylus_core::Result;
use stylus_diffusion::backend::{CpuBackend, cpu_device};
use stylus_diffusion::checkpoint::diffusers::read_clip_config;
use stylus_diffusion::lora::merge::BaseTensors;
use stylus_diffusion::lora::{Network, TargetModule, TargetTable, TensorFile};
use stylus_diffusion::models::unet::UNetConfig;

pub type B = CpuBackend;

/// `crates/stylus-diffusion/tests/fixtures/lora/<name>`.
pub fn lora_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/lora")
        .join(name)
}

/// The tiny diffusers folder of the SD parity fixtures.
pub fn tiny_sd() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd/tiny-diffusers")
}

/// `../shared/fixtures/loras` (beside the repository), or `None` (the test is skipped, see
/// `stylus-test-data`) without it.
pub fn shared_loras() -> Option<PathBuf> {
    stylus_test_data::shared("fixtures/loras")
}

/// The target table of the tiny model.
pub fn tiny_table() -> TargetTable {
    let unet = UNetConfig::from_diffusers_json(&tiny_sd().join("unet/config.json")).unwrap();
    let text = read_clip_config(&tiny_sd().join("text_encoder/config.json")).unwrap();
    TargetTable::from_configs(&unet, &text)
}

/// The tiny model's weights, read by name from its safetensors files.
pub struct TinyWeights {
    pub unet: TensorFile,
    pub text_encoder: TensorFile,
}

impl TinyWeights {
    pub fn open() -> Self {
        Self {
            unet: TensorFile::open(&tiny_sd().join("unet/diffusion_pytorch_model.safetensors"))
                .unwrap(),
            text_encoder: TensorFile::open(&tiny_sd().join("text_encoder/model.safetensors"))
                .unwrap(),
        }
    }

    /// The file and key of `id`'s `suffix` tensor (text-encoder files may lack `text_model.`).
    pub fn key(&self, network: Network, id: &str, suffix: &str) -> (&TensorFile, String) {
        match network {
            Network::Unet => (&self.unet, format!("{id}.{suffix}")),
            Network::TextEncoder => {
                let key = format!("{id}.{suffix}");
                if self.text_encoder.tensors().contains_key(&key) {
                    (&self.text_encoder, key)
                } else {
                    (
                        &self.text_encoder,
                        format!("{}.{suffix}", id.trim_start_matches("text_model.")),
                    )
                }
            }
        }
    }

    /// Base tensors of `target` in f32, PyTorch layout.
    pub fn base(&self, target: &TargetModule) -> Result<BaseTensors<B>> {
        let device = cpu_device();
        let (file, key) = self.key(target.network, &target.id, "weight");
        let weight = Tensor::<B, 2>::from_data(
            TensorData::new(
                file.f32(&key)?,
                [target.out_features(), target.in_elements()],
            ),
            &device,
        );
        let (file, key) = self.key(target.network, &target.id, "bias");
        let bias = if file.tensors().contains_key(&key) {
            let values = file.f32(&key)?;
            let len = values.len();
            Some(Tensor::<B, 1>::from_data(
                TensorData::new(values, [len]),
                &device,
            ))
        } else {
            None
        };
        Ok((weight, bias))
    }
}

/// ‖a − b‖ / ‖b‖ in f64.
pub fn relative_error(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let diff: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum();
    let norm: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (diff / norm).sqrt()
}

/// Values of a tensor as f32.
pub fn values<const D: usize>(tensor: Tensor<B, D>) -> Vec<f32> {
    tensor
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap()
}
