//! Single-file LDM checkpoints as Civitai distributes SD 1.x models: `model.diffusion_model.*`
//! (UNet), `first_stage_model.*` (VAE), `cond_stage_model.transformer[.text_model].*` (CLIP),
//! plus buffers that are ignored (see [`super::mapping`]). Keys are renamed through the mapping
//! table; configs are inferred from shapes.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::DType;
use burn::tensor::backend::Backend;
use stylus_core::{Result, StylusError};

use super::apply::{PlannedTensor, apply_tensors};
use super::infer::{self, Shapes};
use super::mapping::{
    KeyFate, LDM_UNET_PREFIX, LDM_VAE_PREFIX, LdmUNetLayout, foreign_architecture, ldm_key_fate,
};
use super::report::{ComponentReport, LoadReport};
use super::safetensors_file::SafetensorsFile;
use super::{Component, SdConfig, StableDiffusion};

/// What a single file holds for one network.
#[derive(Debug, Default)]
struct ComponentPlan {
    planned: Vec<PlannedTensor>,
    shapes: Shapes,
}

/// Loads all three networks from a single-file checkpoint.
pub fn load<B: Backend>(
    path: &Path,
    device: &B::Device,
    dtype: DType,
) -> Result<(StableDiffusion<B>, LoadReport)> {
    let file = SafetensorsFile::open(path)?;
    let all_shapes: BTreeMap<String, Vec<usize>> = file
        .entries()
        .iter()
        .map(|(k, e)| (k.clone(), e.shape.clone()))
        .collect();
    if let Some(architecture) = foreign_architecture(&all_shapes) {
        return Err(StylusError::UnsupportedFormat {
            path: path.to_path_buf(),
            message: format!("{architecture}; only SD 1.x checkpoints are supported"),
        });
    }
    let model_error = |message: String| StylusError::Model {
        path: path.to_path_buf(),
        message,
    };
    let unet_keys = all_shapes
        .keys()
        .filter_map(|k| k.strip_prefix(LDM_UNET_PREFIX));
    if unet_keys.clone().next().is_none() {
        let hint = if all_shapes.keys().any(|k| k.starts_with("lora_")) {
            " (it looks like a LoRA file)"
        } else {
            ""
        };
        return Err(model_error(format!(
            "no {LDM_UNET_PREFIX}* tensors: not a single-file SD checkpoint{hint}"
        )));
    }
    let layout = LdmUNetLayout::infer(unet_keys).ok_or_else(|| {
        model_error("cannot read the UNet block layout from input_blocks.*".into())
    })?;
    let vae_levels = all_shapes
        .keys()
        .filter_map(|k| {
            k.strip_prefix(LDM_VAE_PREFIX)?
                .strip_prefix("encoder.down.")?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .map_or(0, |max| max + 1);

    let mut plans: BTreeMap<Component, ComponentPlan> = BTreeMap::new();
    let mut ignored = Vec::new();
    let mut unexpected = Vec::new();
    for (key, entry) in file.entries() {
        match ldm_key_fate(key, &layout, vae_levels) {
            KeyFate::Load(mapped) => {
                let mut shape = entry.shape.clone();
                if mapped.squeeze_1x1 && shape.len() == 4 && shape[2..] == [1, 1] {
                    shape.truncate(2);
                }
                let plan = plans.entry(mapped.component).or_default();
                plan.shapes.insert(mapped.name.clone(), shape.clone());
                plan.planned.push(PlannedTensor {
                    source_key: key.clone(),
                    target: mapped.name,
                    shape,
                });
            }
            KeyFate::Ignore => ignored.push(key.clone()),
            KeyFate::Unexpected => unexpected.push(key.clone()),
        }
    }
    if !unexpected.is_empty() {
        let shown: Vec<&str> = unexpected.iter().take(12).map(String::as_str).collect();
        return Err(model_error(format!(
            "{} unexpected tensor(s) for an SD 1.x checkpoint: {}{}",
            unexpected.len(),
            shown.join(", "),
            if unexpected.len() > 12 { " ..." } else { "" }
        )));
    }
    let mut take = |component: Component| {
        plans.remove(&component).ok_or_else(|| {
            model_error(format!(
                "the checkpoint has no {component:?} weights ({} tensors)",
                component.ldm_prefix()
            ))
        })
    };
    let unet_plan = take(Component::Unet)?;
    let vae_plan = take(Component::Vae)?;
    let text_plan = take(Component::TextEncoder)?;

    let unet_config = infer::unet_config(&unet_plan.shapes, path)?;
    let vae_config = infer::vae_config(&vae_plan.shapes, path)?;
    let text_config = infer::clip_config(&text_plan.shapes, path)?;

    let mut unet = unet_config.init(device);
    let mut vae = vae_config.init(device);
    let mut text_encoder = text_config.init(device);
    let owned_ignored = |component: Component| -> Vec<String> {
        ignored
            .iter()
            .filter(|k| k.starts_with(component.ldm_prefix()))
            .cloned()
            .collect()
    };
    let mut components: Vec<ComponentReport> = vec![
        apply_tensors(
            &mut text_encoder,
            Component::TextEncoder,
            &file,
            text_plan.planned,
            owned_ignored(Component::TextEncoder),
            dtype,
        )?,
        apply_tensors(
            &mut unet,
            Component::Unet,
            &file,
            unet_plan.planned,
            owned_ignored(Component::Unet),
            dtype,
        )?,
        apply_tensors(
            &mut vae,
            Component::Vae,
            &file,
            vae_plan.planned,
            owned_ignored(Component::Vae),
            dtype,
        )?,
    ];
    // Top-level buffers (schedule, EMA) belong to no network; list them under the UNet.
    let unowned: Vec<String> = ignored
        .iter()
        .filter(|k| {
            ![Component::TextEncoder, Component::Unet, Component::Vae]
                .iter()
                .any(|c| k.starts_with(c.ldm_prefix()))
        })
        .cloned()
        .collect();
    components[1].ignored.extend(unowned);

    Ok((
        StableDiffusion {
            text_encoder,
            unet,
            vae,
            config: SdConfig {
                text_encoder: text_config,
                unet: unet_config,
                vae: vae_config,
            },
        },
        LoadReport {
            layout: "single-file LDM checkpoint",
            components,
        },
    ))
}
