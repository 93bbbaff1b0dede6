//! Bad checkpoints get typed errors naming the file and tensor: wrong shapes, missing and
//! unexpected tensors, truncated files, NaN weights, pickles, SD 2.x / SDXL files. Also the
//! accepted variants: the legacy VAE attention spelling and bf16 weights.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{DType, Tensor, TensorData};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use stylus_core::StylusError;
use stylus_diffusion::StableDiffusion;
use stylus_diffusion::backend::{CpuBackend, cpu_device};

type B = CpuBackend;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd")
}

/// `(dtype, shape, bytes)` of every tensor of a safetensors file.
type Tensors = BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>;

fn read_tensors(path: &Path) -> Tensors {
    let bytes = std::fs::read(path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            (
                name,
                (view.dtype(), view.shape().to_vec(), view.data().to_vec()),
            )
        })
        .collect()
}

fn write_tensors(path: &Path, tensors: &Tensors) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, (dtype, shape, data))| {
            (
                name.clone(),
                TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// A copy of the single-file fixture with `edit` applied, in a temporary directory.
fn edited_single_file(edit: impl FnOnce(&mut Tensors)) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = read_tensors(&fixtures().join("tiny-ldm.safetensors"));
    edit(&mut tensors);
    let path = dir.path().join("model.safetensors");
    write_tensors(&path, &tensors);
    (dir, path)
}

/// A copy of the diffusers fixture folder, in a temporary directory.
fn copied_folder() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("model");
    for sub in ["unet", "vae", "text_encoder"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
        for entry in std::fs::read_dir(fixtures().join("tiny-diffusers").join(sub)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), root.join(sub).join(entry.file_name())).unwrap();
        }
    }
    (dir, root)
}

fn load_error(path: &Path) -> StylusError {
    match StableDiffusion::<B>::load(path, &cpu_device(), DType::F32) {
        Ok(_) => panic!("{} loaded although it is broken", path.display()),
        Err(error) => error,
    }
}

const UNET_CONV1: &str = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight";

#[test]
fn wrong_shape_is_an_error_naming_the_tensor() {
    let (_dir, path) = edited_single_file(|t| {
        let entry = t.get_mut(UNET_CONV1).unwrap();
        // [32, 32, 3, 3] -> [32, 32, 1, 9]: same bytes, wrong shape.
        entry.1 = vec![32, 32, 1, 9];
    });
    let error = load_error(&path);
    let message = error.to_string();
    assert!(matches!(error, StylusError::Model { .. }), "{error:?}");
    assert!(message.contains(UNET_CONV1), "{message}");
    assert!(message.contains("model.safetensors"), "{message}");
}

#[test]
fn missing_tensor_is_an_error_listing_it() {
    let (_dir, path) = edited_single_file(|t| {
        t.remove("first_stage_model.decoder.conv_out.bias");
    });
    let message = load_error(&path).to_string();
    assert!(message.contains("decoder.conv_out.bias"), "{message}");
    assert!(message.contains("not in the file"), "{message}");
}

#[test]
fn unexpected_tensor_is_an_error_listing_it() {
    let (_dir, path) = edited_single_file(|t| {
        t.insert(
            "model.diffusion_model.mystery_block.weight".into(),
            (Dtype::F32, vec![2], vec![0; 8]),
        );
    });
    let message = load_error(&path).to_string();
    assert!(
        message.contains("model.diffusion_model.mystery_block.weight"),
        "{message}"
    );
}

#[test]
fn truncated_file_is_a_safetensors_error() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixtures().join("tiny-ldm.safetensors")).unwrap();
    let path = dir.path().join("truncated.safetensors");
    std::fs::write(&path, &bytes[..bytes.len() - 1000]).unwrap();
    let error = load_error(&path);
    assert!(
        matches!(&error, StylusError::Safetensors { path: p, .. } if p == &path),
        "{error:?}"
    );
}

#[test]
fn nan_weight_is_a_tensor_error_naming_file_and_key() {
    let (_dir, path) = edited_single_file(|t| {
        let entry = t.get_mut(UNET_CONV1).unwrap();
        // f16 NaN (0x7e00) in the 5th element.
        entry.2[8] = 0x00;
        entry.2[9] = 0x7e;
    });
    match load_error(&path) {
        StylusError::Tensor {
            path: p,
            key,
            message,
        } => {
            assert_eq!(p, path);
            assert_eq!(key, UNET_CONV1);
            assert!(message.contains("non-finite"), "{message}");
        }
        other => panic!("expected a tensor error, got {other:?}"),
    }
}

#[test]
fn pickle_checkpoints_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["model.ckpt", "model.pt", "model.bin", "model.pth"] {
        let path = dir.path().join(name);
        std::fs::write(&path, b"PK\x03\x04 not really a zip").unwrap();
        let error = load_error(&path);
        assert!(
            matches!(&error, StylusError::UnsupportedFormat { .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("pickle"), "{error}");
    }
    // A diffusers folder whose UNet only exists as a pickle.
    let (_dir, root) = copied_folder();
    let unet = root.join("unet/diffusion_pytorch_model.safetensors");
    std::fs::rename(&unet, unet.with_extension("bin")).unwrap();
    let error = load_error(&root);
    assert!(
        matches!(&error, StylusError::UnsupportedFormat { .. }),
        "{error:?}"
    );
}

#[test]
fn sdxl_and_sd2_files_are_refused_with_the_architecture_named() {
    let f32_tensor = |shape: Vec<usize>| {
        let count: usize = shape.iter().product();
        (Dtype::F32, shape, vec![0u8; count * 4])
    };
    let dir = tempfile::tempdir().unwrap();
    // (file name, tensors with their shapes, architecture the error must name)
    type Case<'a> = (&'a str, Vec<(&'a str, Vec<usize>)>, &'a str);
    let cases: [Case<'_>; 3] = [
        (
            "sdxl.safetensors",
            vec![
                (
                    "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
                    vec![4],
                ),
                (
                    "model.diffusion_model.input_blocks.0.0.weight",
                    vec![4, 4, 3, 3],
                ),
            ],
            "SDXL",
        ),
        (
            "sd2.safetensors",
            vec![
                ("cond_stage_model.model.ln_final.weight", vec![4]),
                (
                    "model.diffusion_model.input_blocks.0.0.weight",
                    vec![4, 4, 3, 3],
                ),
            ],
            "SD 2.x",
        ),
        (
            "sd2-shapes.safetensors",
            vec![(
                "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
                vec![320, 1024],
            )],
            "SD 2.x",
        ),
    ];
    for (name, keys, architecture) in cases {
        let tensors: Tensors = keys
            .into_iter()
            .map(|(key, shape)| (key.to_string(), f32_tensor(shape)))
            .collect();
        let path = dir.path().join(name);
        write_tensors(&path, &tensors);
        let error = load_error(&path);
        assert!(
            matches!(&error, StylusError::UnsupportedFormat { .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains(architecture), "{error}");
    }
}

#[test]
fn legacy_vae_attention_names_load_to_the_same_model() {
    let (_dir, root) = copied_folder();
    let vae_file = root.join("vae/diffusion_pytorch_model.fp16.safetensors");
    let renamed: Tensors = read_tensors(&vae_file)
        .into_iter()
        .map(|(key, value)| {
            let key = key
                .replace(".to_q.", ".query.")
                .replace(".to_k.", ".key.")
                .replace(".to_v.", ".value.")
                .replace(".to_out.0.", ".proj_attn.");
            (key, value)
        })
        .collect();
    assert!(renamed.keys().any(|k| k.contains(".proj_attn.")));
    write_tensors(&vae_file, &renamed);
    let (legacy, _) = StableDiffusion::<B>::load(&root, &cpu_device(), DType::F32).unwrap();
    let (current, _) =
        StableDiffusion::<B>::load(fixtures().join("tiny-diffusers"), &cpu_device(), DType::F32)
            .unwrap();
    let latents = Tensor::<B, 4>::from_data(
        TensorData::new(
            (0..256)
                .map(|i| (i as f32 * 0.37).sin())
                .collect::<Vec<_>>(),
            [1, 4, 8, 8],
        ),
        &cpu_device(),
    );
    legacy
        .vae
        .decode(latents.clone())
        .into_data()
        .assert_eq(&current.vae.decode(latents).into_data(), true);
}

#[test]
fn bf16_weights_load_and_cast_to_the_model_dtype() {
    let (_dir, root) = copied_folder();
    let file = root.join("text_encoder/model.safetensors");
    let as_bf16: Tensors = read_tensors(&file)
        .into_iter()
        .map(|(key, (dtype, shape, data))| {
            assert_eq!(dtype, Dtype::F16);
            let data = data
                .chunks_exact(2)
                .flat_map(|c| {
                    let value = half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
                    half::bf16::from_f32(value).to_bits().to_le_bytes()
                })
                .collect();
            (key, (Dtype::BF16, shape, data))
        })
        .collect();
    write_tensors(&file, &as_bf16);
    let (sd, report) = StableDiffusion::<B>::load(&root, &cpu_device(), DType::F32).unwrap();
    let text = report
        .component(stylus_diffusion::Component::TextEncoder)
        .unwrap();
    assert_eq!(text.source_dtypes.keys().collect::<Vec<_>>(), ["BF16"]);
    let weight = sd.text_encoder.text_model.final_layer_norm.gamma.val();
    assert_eq!(weight.dtype(), DType::F32);
}
