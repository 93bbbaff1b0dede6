//! `stylus bench`: times our SD 1.5 stack on one device, for the side-by-side comparison with
//! diffusers in `benches/gpu/bench.py` (which makes the random weights and inputs and reads our
//! JSON). Same measurements as that script: UNet call at batch 1/2/8, CLIP encode, VAE decode,
//! txt2img with CFG, loading + merging 3 LoRAs, switching adapter sets.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};
use stylus_core::{SampleJob, Sampler, SamplingParams, StylusConfig, StylusError};
use stylus_diffusion::StableDiffusion;
use stylus_diffusion::clip_tokenizer::ClipTokenizer;
use stylus_diffusion::lora::merger::{AdapterStrength, LoraMerger};
use stylus_diffusion::sampler::SdSampler;

use stylus::render::{Device, Dtype};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Diffusers folder or single-file checkpoint to time.
    #[arg(long, value_name = "PATH")]
    pub checkpoint: PathBuf,
    /// The device (GPU ones need the matching build feature).
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: Device,
    /// Parameter dtype: f32, or f16 (CUDA only) [default: f32 on the CPU, f16 on a GPU].
    #[arg(long, value_enum)]
    pub dtype: Option<Dtype>,
    /// Safetensors with `latents` [2,4,h,w], `context` [2,77,d], `timestep` [1] (f32).
    #[arg(long, value_name = "FILE")]
    pub inputs: PathBuf,
    /// Write our UNet output on `inputs` here (one f32 tensor `out`).
    #[arg(long, value_name = "FILE")]
    pub save_unet_output: Option<PathBuf>,
    /// LoRA files for the load + merge timing (3 expected).
    #[arg(long, value_name = "FILE")]
    pub lora: Vec<PathBuf>,
    /// txt2img steps.
    #[arg(long, default_value_t = 25)]
    pub steps: usize,
    /// Timed repetitions of each short measurement.
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args, _config: &StylusConfig) -> Result<(), StylusError> {
    args.device.check()?;
    let dtype = args.dtype.unwrap_or(Dtype::default_for(args.device));
    let results = match (args.device, dtype) {
        (Device::Cpu, Dtype::F32) => {
            let device = stylus_diffusion::backend::cpu_device();
            bench::<stylus_diffusion::backend::CpuBackend>(&args, &device, DType::F32)?
        }
        #[cfg(feature = "cuda")]
        (Device::Cuda, Dtype::F16) => {
            type B = burn::backend::Cuda<half::f16>;
            let device = burn::backend::cuda::CudaDevice::new(0);
            stylus_diffusion::backend::probe_device::<B>(&device, "CUDA device 0")?;
            bench::<B>(&args, &device, DType::F16)?
        }
        #[cfg(feature = "cuda")]
        (Device::Cuda, Dtype::F32) => {
            let device = stylus_diffusion::backend::cuda_device(0)?;
            bench::<stylus_diffusion::backend::CudaBackend>(&args, &device, DType::F32)?
        }
        #[cfg(feature = "wgpu")]
        (Device::Wgpu, Dtype::F32) => {
            let device = stylus_diffusion::backend::wgpu_device()?;
            bench::<stylus_diffusion::backend::WgpuBackend>(&args, &device, DType::F32)?
        }
        (device, dtype) => {
            return Err(StylusError::Device(format!(
                "device `{}` with dtype `{}` is not available in this build \
                 (cpu: f32; cuda: f16/f32 with --features cuda; wgpu: f32 with --features wgpu)",
                device.name(),
                dtype.name()
            )));
        }
    };
    if args.json {
        println!("{}", serde_json::to_string(&results).expect("a JSON map"));
    } else {
        for (key, value) in results.as_object().expect("a JSON map") {
            println!("{key:<26} {value}");
        }
    }
    Ok(())
}

/// Mean milliseconds of `f` over `iters` calls after `warmup` calls; `sync` waits for the device.
fn time_ms(warmup: usize, iters: usize, mut f: impl FnMut(), sync: impl Fn()) -> f64 {
    for _ in 0..warmup {
        f();
    }
    sync();
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    sync();
    start.elapsed().as_secs_f64() * 1e3 / iters.max(1) as f64
}

fn bench<B: Backend>(
    args: &Args,
    device: &B::Device,
    dtype: DType,
) -> Result<serde_json::Value, StylusError> {
    let sync = || {
        let _ = B::sync(device);
    };
    let started = Instant::now();
    let (model, _report) = StableDiffusion::<B>::load(&args.checkpoint, device, dtype)?;
    sync();
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let inputs = Inputs::read(&args.inputs)?;
    let mut out = serde_json::Map::new();
    out.insert("model_load_ms".into(), load_ms.into());

    let latents = inputs.tensor::<B, 4>("latents", device)?;
    let context = inputs.tensor::<B, 3>("context", device)?;
    let timestep = inputs.scalar("timestep")?;
    let prediction = model
        .unet
        .forward(latents.clone(), timestep, context.clone());
    if let Some(path) = &args.save_unet_output {
        let dims = prediction.dims();
        let values: Vec<f32> = prediction
            .clone()
            .cast(DType::F32)
            .into_data()
            .convert::<f32>()
            .into_vec()
            .map_err(|e| StylusError::Device(format!("reading the UNet output: {e:?}")))?;
        write_f32(path, "out", &values, &dims)?;
    }

    let first = |t: Tensor<B, 4>| t.narrow(0, 0, 1);
    for batch in [1usize, 2, 8] {
        let x = first(latents.clone()).repeat_dim(0, batch);
        let c = context.clone().narrow(0, 0, 1).repeat_dim(0, batch);
        let ms = time_ms(
            3,
            args.iters,
            || {
                let _ = model.unet.forward(x.clone(), timestep, c.clone());
            },
            sync,
        );
        out.insert(format!("unet_b{batch}_ms"), ms.into());
    }

    let ids: Vec<i64> = std::iter::once(49406)
        .chain((0..10).map(|i| 320 + i))
        .chain(std::iter::repeat_n(49407, 66))
        .collect();
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, 77]), device);
    let ms = time_ms(
        3,
        args.iters,
        || {
            let _ = model.text_encoder.forward(ids.clone());
        },
        sync,
    );
    out.insert("clip_encode_ms".into(), ms.into());

    let z = first(latents.clone());
    let ms = time_ms(
        1,
        args.iters.min(3),
        || {
            let _ = model.vae.decode_latents(z.clone());
        },
        sync,
    );
    out.insert("vae_decode_ms".into(), ms.into());

    if !args.lora.is_empty() {
        let merger = LoraMerger::new(
            model.unet.clone(),
            &model.config.unet,
            model.text_encoder.clone(),
            device,
        );
        let strengths = |paths: &[PathBuf]| -> Vec<AdapterStrength> {
            paths
                .iter()
                .map(|p| AdapterStrength {
                    path: p.clone(),
                    unet: 0.5,
                    text_encoder: 0.5,
                })
                .collect()
        };
        let started = Instant::now();
        merger.merge(&strengths(&args.lora))?;
        sync();
        out.insert(
            "lora_load_merge_3_ms".into(),
            (started.elapsed().as_secs_f64() * 1e3).into(),
        );
        let started = Instant::now();
        merger.merge(&strengths(&args.lora[..args.lora.len().min(2)]))?;
        sync();
        out.insert(
            "lora_switch_ms".into(),
            (started.elapsed().as_secs_f64() * 1e3).into(),
        );
    }

    let [_, _, h, w] = latents.dims();
    let factor = stylus_diffusion::sampler::vae_scale_factor(&model);
    let sampler = SdSampler::new(
        Arc::new(Mutex::new(model)),
        ClipTokenizer::bundled()?,
        device.clone(),
    );
    let job = SampleJob {
        adapters: Vec::new(),
        prompt: "a photo of a cat in the rain".into(),
        negative_prompt: String::new(),
        seed: 0,
        first_image: 0,
        batch: 1,
        sampling: SamplingParams {
            steps: args.steps,
            guidance_scale: 5.0,
            sampler: "dpmpp_2m_karras".into(),
            width: (w * factor) as u32,
            height: (h * factor) as u32,
            clip_skip: 1,
        },
        init_latents: None,
        keep_latents: false,
        init_image: None,
    };
    let mut result = Ok(());
    let ms = time_ms(
        1,
        2,
        || {
            if let Err(e) = sampler.sample(&job) {
                result = Err(e);
            }
        },
        sync,
    );
    result?;
    out.insert("txt2img_ms".into(), ms.into());
    out.insert("device".into(), B::name(device).into());
    out.insert("dtype".into(), format!("{dtype:?}").into());
    Ok(serde_json::Value::Object(out))
}

/// The f32 tensors of the inputs file.
struct Inputs {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl Inputs {
    fn read(path: &Path) -> Result<Self, StylusError> {
        Ok(Self {
            path: path.to_path_buf(),
            bytes: std::fs::read(path).map_err(|e| StylusError::io(path, e))?,
        })
    }

    fn values(&self, key: &str) -> Result<(Vec<f32>, Vec<usize>), StylusError> {
        let file = safetensors::SafeTensors::deserialize(&self.bytes).map_err(|e| {
            StylusError::Safetensors {
                path: self.path.clone(),
                message: e.to_string(),
                source: Some(Box::new(e)),
            }
        })?;
        let view = file
            .tensor(key)
            .map_err(|e| StylusError::tensor(&self.path, key, e.to_string()))?;
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(StylusError::tensor(
                &self.path,
                key,
                format!("dtype {:?}, expected F32", view.dtype()),
            ));
        }
        let values = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok((values, view.shape().to_vec()))
    }

    fn tensor<B: Backend, const D: usize>(
        &self,
        key: &str,
        device: &B::Device,
    ) -> Result<Tensor<B, D>, StylusError> {
        let (values, shape) = self.values(key)?;
        if shape.len() != D {
            return Err(StylusError::tensor(
                &self.path,
                key,
                format!("shape {shape:?}, expected {D} dimensions"),
            ));
        }
        Ok(Tensor::from_data(TensorData::new(values, shape), device))
    }

    fn scalar(&self, key: &str) -> Result<f32, StylusError> {
        let (values, _) = self.values(key)?;
        values
            .first()
            .copied()
            .ok_or_else(|| StylusError::tensor(&self.path, key, "empty tensor"))
    }
}

fn write_f32(path: &Path, key: &str, values: &[f32], dims: &[usize]) -> Result<(), StylusError> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, dims.to_vec(), &bytes)
        .map_err(|e| StylusError::tensor(path, key, e.to_string()))?;
    safetensors::serialize_to_file([(key, view)], None, path).map_err(|e| {
        StylusError::Safetensors {
            path: path.to_path_buf(),
            message: e.to_string(),
            source: Some(Box::new(e)),
        }
    })
}
