//! Parity of the SD 1.x networks with diffusers/transformers on the tiny fixture models of
//! `tools/make_sd_fixtures.py`, loaded from BOTH the diffusers folder and the single-file LDM
//! checkpoint: relative L2 error <= 1e-4 in f32.

use std::path::{Path, PathBuf};

use burn::tensor::{DType, Int, Tensor, TensorData};
use safetensors::SafeTensors;
use stylus_diffusion::backend::{CpuBackend, cpu_device};
use stylus_diffusion::models::parameters::parameters;
use stylus_diffusion::{Component, LoadReport, StableDiffusion};

type B = CpuBackend;

const TOLERANCE: f64 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd")
}

/// The two layouts of the same weights.
fn layouts() -> [PathBuf; 2] {
    [
        fixtures().join("tiny-diffusers"),
        fixtures().join("tiny-ldm.safetensors"),
    ]
}

struct References {
    bytes: Vec<u8>,
}

impl References {
    fn load() -> Self {
        Self {
            bytes: std::fs::read(fixtures().join("reference.safetensors")).unwrap(),
        }
    }

    fn view(&self, name: &str) -> (Vec<usize>, Vec<u8>, safetensors::Dtype) {
        let file = SafeTensors::deserialize(&self.bytes).unwrap();
        let view = file
            .tensor(name)
            .unwrap_or_else(|_| panic!("no reference `{name}`"));
        (view.shape().to_vec(), view.data().to_vec(), view.dtype())
    }

    fn floats(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let (shape, data, dtype) = self.view(name);
        assert_eq!(dtype, safetensors::Dtype::F32, "{name}");
        let values = data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        (shape, values)
    }

    fn tensor<const D: usize>(&self, name: &str) -> Tensor<B, D> {
        let (shape, values) = self.floats(name);
        Tensor::from_data(TensorData::new(values, shape), &cpu_device())
    }

    fn token_ids(&self, name: &str) -> Tensor<B, 2, Int> {
        let (shape, data, dtype) = self.view(name);
        assert_eq!(dtype, safetensors::Dtype::I64);
        let ids: Vec<i64> = data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        Tensor::from_data(TensorData::new(ids, shape), &cpu_device())
    }
}

/// `||actual - expected|| / ||expected||`, after checking the shapes agree.
fn relative_l2<const D: usize>(actual: Tensor<B, D>, expected: &(Vec<usize>, Vec<f32>)) -> f64 {
    assert_eq!(actual.dims().to_vec(), expected.0, "shape");
    let actual: Vec<f32> = actual.into_data().convert::<f32>().to_vec().unwrap();
    let (mut diff, mut norm) = (0f64, 0f64);
    for (a, e) in actual.iter().zip(&expected.1) {
        diff += (f64::from(*a) - f64::from(*e)).powi(2);
        norm += f64::from(*e).powi(2);
    }
    (diff / norm).sqrt()
}

fn load(path: &Path) -> (StableDiffusion<B>, LoadReport) {
    StableDiffusion::<B>::load(path, &cpu_device(), DType::F32)
        .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

#[test]
fn clip_text_encoder_matches_transformers_in_both_layouts() {
    let refs = References::load();
    for layout in layouts() {
        let (sd, _) = load(&layout);
        let output = sd.text_encoder.forward(refs.token_ids("clip.input_ids"));
        let last = relative_l2(
            output.last_hidden_state,
            &refs.floats("clip.last_hidden_state"),
        );
        let penultimate = relative_l2(
            output.penultimate_hidden_state,
            &refs.floats("clip.penultimate_hidden_state"),
        );
        println!(
            "{}: CLIP last {last:.2e}, penultimate {penultimate:.2e}",
            layout.display()
        );
        assert!(last <= TOLERANCE, "last hidden state rel. L2 {last}");
        assert!(
            penultimate <= TOLERANCE,
            "penultimate rel. L2 {penultimate}"
        );
    }
}

#[test]
fn unet_matches_diffusers_at_three_latent_sizes_in_both_layouts() {
    let refs = References::load();
    for layout in layouts() {
        let (sd, _) = load(&layout);
        for case in ["unet_8x8", "unet_16x8", "unet_9x7"] {
            let timesteps = refs.floats(&format!("{case}.timesteps")).1;
            let prediction = sd.unet.forward_timesteps(
                refs.tensor(&format!("{case}.latents")),
                &timesteps,
                refs.tensor(&format!("{case}.context")),
            );
            let error = relative_l2(prediction, &refs.floats(&format!("{case}.noise_pred")));
            println!("{}: {case} rel. L2 {error:.2e}", layout.display());
            assert!(error <= TOLERANCE, "{case}: rel. L2 {error}");
        }
    }
}

#[test]
fn unet_scalar_timestep_equals_per_item_timesteps() {
    let refs = References::load();
    let (sd, _) = load(&layouts()[0]);
    let latents: Tensor<B, 4> = refs.tensor("unet_16x8.latents");
    let context: Tensor<B, 3> = refs.tensor("unet_16x8.context");
    let scalar = sd.unet.forward(latents.clone(), 500.0, context.clone());
    let error = relative_l2(scalar, &refs.floats("unet_16x8.noise_pred"));
    assert!(error <= TOLERANCE, "rel. L2 {error}");
}

#[test]
fn vae_decode_and_encode_match_diffusers_in_both_layouts() {
    let refs = References::load();
    for layout in layouts() {
        let (sd, _) = load(&layout);
        let image = sd.vae.decode(refs.tensor("vae.decode.latents"));
        let decode = relative_l2(image, &refs.floats("vae.decode.image"));
        let posterior = sd.vae.encode(refs.tensor("vae.encode.image"));
        let encode = relative_l2(posterior.mean, &refs.floats("vae.encode.mean"));
        println!(
            "{}: VAE decode {decode:.2e}, encode {encode:.2e}",
            layout.display()
        );
        assert!(decode <= TOLERANCE, "decode rel. L2 {decode}");
        assert!(encode <= TOLERANCE, "encode rel. L2 {encode}");
    }
}

#[test]
fn load_reports_are_clean_and_cover_every_parameter() {
    for layout in layouts() {
        let (sd, report) = load(&layout);
        let expected = [
            (
                Component::TextEncoder,
                parameters::<B, _>(&sd.text_encoder).len(),
            ),
            (Component::Unet, parameters::<B, _>(&sd.unet).len()),
            (Component::Vae, parameters::<B, _>(&sd.vae).len()),
        ];
        for (component, count) in expected {
            let entry = report.component(component).unwrap();
            assert_eq!(
                entry.loaded,
                count,
                "{component:?} from {}",
                layout.display()
            );
            assert_eq!(
                entry.source_dtypes.get("F16"),
                Some(&count),
                "{component:?}"
            );
        }
        let mut ignored: Vec<String> = report
            .components
            .iter()
            .flat_map(|c| c.ignored.clone())
            .collect();
        ignored.sort();
        if layout.is_dir() {
            assert!(ignored.is_empty(), "{ignored:?}");
        } else {
            assert_eq!(
                ignored,
                [
                    "alphas_cumprod",
                    "betas",
                    "cond_stage_model.transformer.text_model.embeddings.position_ids",
                    "model_ema.decay",
                    "model_ema.num_updates",
                ]
            );
        }
        assert_eq!(sd.config.unet.cross_attention_dim, 24);
        assert_eq!(sd.config.vae.block_out_channels, vec![32, 32]);
        assert_eq!(sd.config.text_encoder.num_hidden_layers, 3);
    }
}

#[test]
fn clip_skip_two_matches_diffusers_encode_prompt() {
    let refs = References::load();
    let (sd, _) = load(&layouts()[1]);
    let conditioning = sd
        .text_encoder
        .encode(refs.token_ids("clip.input_ids"), 2)
        .unwrap();
    let error = relative_l2(conditioning, &refs.floats("clip.clip_skip_2"));
    assert!(error <= TOLERANCE, "rel. L2 {error}");
}

#[test]
fn half_precision_models_follow_the_f32_models() {
    // f16/bf16 parameters and activations (burn-flex computes in the tensor dtype): the results
    // must stay close to the f32 reference; exact parity is an f32 property only.
    let refs = References::load();
    for (dtype, tolerance) in [(DType::F16, 5e-3), (DType::BF16, 4e-2)] {
        let (sd, _) = StableDiffusion::<B>::load(&layouts()[0], &cpu_device(), dtype).unwrap();
        let latents: Tensor<B, 4> = refs.tensor("unet_8x8.latents");
        let context: Tensor<B, 3> = refs.tensor("unet_8x8.context");
        let timesteps = refs.floats("unet_8x8.timesteps").1;
        let prediction =
            sd.unet
                .forward_timesteps(latents.cast(dtype), &timesteps, context.cast(dtype));
        assert_eq!(prediction.dtype(), dtype);
        let error = relative_l2(prediction, &refs.floats("unet_8x8.noise_pred"));
        println!("{dtype:?}: UNet rel. L2 {error:.2e}");
        assert!(error <= tolerance, "{dtype:?}: rel. L2 {error}");
    }
}
