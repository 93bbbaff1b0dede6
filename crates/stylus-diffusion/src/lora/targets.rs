//! The modules a LoRA can target, enumerated from our own model tree, and every name under which
//! adapter files refer to them.
//!
//! The table is built by walking the burn modules ([`crate::models::parameters`]): each `Linear`
//! and `Conv2d` weight of the UNet and the text encoder becomes a [`TargetModule`] whose id is
//! its diffusers module path. The spellings adapter files use (kohya `lora_unet_<path with _>`,
//! kohya-LDM `lora_unet_input_blocks_4_1_...`, `lycoris_`, PEFT `unet.<path>`, old diffusers
//! `processor.to_q`, `lora_te_`/`lora_te1_`, `text_encoder.`, ComfyUI `diffusion_model.<ldm>`)
//! are generated *from* these ids, so a name resolves only if the module really exists; nothing
//! turns `_` back into `.`.

use std::collections::HashMap;

use burn::tensor::backend::Backend;

use crate::backend::{CpuBackend, cpu_device};
use crate::models::clip::{ClipTextConfig, ClipTextModel};
use crate::models::parameters::{ParameterInfo, parameters};
use crate::models::unet::{UNet2DConditionModel, UNetConfig};

/// Which network a module belongs to (LoRA strengths can differ per network).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Network {
    /// The denoising UNet.
    Unet,
    /// The CLIP text encoder.
    TextEncoder,
}

/// The layer type of a target; it decides the weight layout in burn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum LayerKind {
    /// `nn::Linear`: PyTorch weight `[out, in]`, burn weight `[in, out]`.
    Linear,
    /// `nn::Conv2d`: weight `[out, in, kh, kw]` in both.
    Conv2d,
}

/// One module an adapter can change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetModule {
    /// diffusers/transformers module path (`down_blocks.1.attentions.0.proj_in`,
    /// `text_model.encoder.layers.3.mlp.fc1`).
    pub id: String,
    /// The network that holds it.
    pub network: Network,
    /// Linear or convolution.
    pub layer: LayerKind,
    /// Weight shape in PyTorch layout (`[out, in]` or `[out, in, kh, kw]`).
    pub shape: Vec<usize>,
    /// Whether the module has a bias (for full-weight `diff_b`).
    pub has_bias: bool,
    /// The module path in a single-file LDM checkpoint, without the network prefix
    /// (`input_blocks.1.1.proj_in`; for the text encoder the id itself).
    pub ldm_id: String,
}

impl TargetModule {
    /// Output features / channels.
    pub fn out_features(&self) -> usize {
        self.shape[0]
    }

    /// Input elements per output: `in` for a linear, `in * kh * kw` for a convolution.
    pub fn in_elements(&self) -> usize {
        self.shape[1..].iter().product()
    }

    /// The weight's key in a single-file LDM checkpoint.
    pub fn ldm_weight_key(&self) -> String {
        match self.network {
            Network::Unet => format!("model.diffusion_model.{}.weight", self.ldm_id),
            Network::TextEncoder => format!("cond_stage_model.transformer.{}.weight", self.ldm_id),
        }
    }
}

/// All targets of a model and the lookup from adapter-file module names to them.
#[derive(Debug, Clone)]
pub struct TargetTable {
    modules: Vec<TargetModule>,
    by_name: HashMap<String, usize>,
}

impl TargetTable {
    /// The table of Stable Diffusion 1.5 (282 UNet and 72 text-encoder modules), enumerated from
    /// lazily initialized models (no weights are computed).
    pub fn sd15() -> Self {
        Self::from_configs(&UNetConfig::v1_5(), &ClipTextConfig::v1_5())
    }

    /// The table of the models these configs build.
    pub fn from_configs(unet: &UNetConfig, text_encoder: &ClipTextConfig) -> Self {
        let device = cpu_device();
        let unet_model = unet.init::<CpuBackend>(&device);
        let text_model = text_encoder.init::<CpuBackend>(&device);
        Self::from_models(&unet_model, unet, &text_model)
    }

    /// The table of two loaded models (`unet_config` gives the LDM block numbering).
    pub fn from_models<B: Backend>(
        unet: &UNet2DConditionModel<B>,
        unet_config: &UNetConfig,
        text_encoder: &ClipTextModel<B>,
    ) -> Self {
        Self::from_parameters(
            &parameters::<B, _>(unet),
            unet_config.layers_per_block,
            &parameters::<B, _>(text_encoder),
        )
    }

    /// The table of the modules listed by [`parameters`] for a UNet with `layers_per_block`
    /// ResNets per down level and for a text encoder.
    pub fn from_parameters(
        unet: &[ParameterInfo],
        layers_per_block: usize,
        text_encoder: &[ParameterInfo],
    ) -> Self {
        let up_levels_with_attention: Vec<usize> = unet
            .iter()
            .filter_map(|p| {
                let rest = p.path.strip_prefix("up_blocks.")?;
                let (level, rest) = rest.split_once('.')?;
                rest.starts_with("attentions.")
                    .then(|| level.parse().ok())?
            })
            .collect();
        let mut modules = Vec::new();
        for (network, params) in [(Network::Unet, unet), (Network::TextEncoder, text_encoder)] {
            for param in params {
                let Some(id) = param.path.strip_suffix(".weight") else {
                    continue;
                };
                let (layer, shape) = match param.module_type.as_str() {
                    "Linear" => (LayerKind::Linear, vec![param.shape[1], param.shape[0]]),
                    "Conv2d" => (LayerKind::Conv2d, param.shape.clone()),
                    _ => continue,
                };
                let bias = format!("{id}.bias");
                let ldm_id = match network {
                    Network::Unet => {
                        diffusers_to_ldm(id, layers_per_block, &up_levels_with_attention)
                    }
                    Network::TextEncoder => id.to_string(),
                };
                modules.push(TargetModule {
                    id: id.to_string(),
                    network,
                    layer,
                    shape,
                    has_bias: params.iter().any(|p| p.path == bias),
                    ldm_id,
                });
            }
        }
        let mut by_name = HashMap::new();
        for (index, module) in modules.iter().enumerate() {
            for name in spellings(module) {
                by_name.insert(name, index);
            }
        }
        Self { modules, by_name }
    }

    /// All targets, UNet first, in model order.
    pub fn modules(&self) -> &[TargetModule] {
        &self.modules
    }

    /// The target at `index`.
    pub fn module(&self, index: usize) -> &TargetModule {
        &self.modules[index]
    }

    /// The index of the module an adapter file calls `name` (the key without its adapter
    /// suffix), if any.
    pub fn resolve(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// The index of the module with diffusers id `id`.
    pub fn by_id(&self, id: &str) -> Option<usize> {
        self.modules.iter().position(|m| m.id == id)
    }

    /// Number of targets in `network`.
    pub fn count(&self, network: Network) -> usize {
        self.modules.iter().filter(|m| m.network == network).count()
    }
}

/// Every name under which adapter files refer to `module`.
fn spellings(module: &TargetModule) -> Vec<String> {
    let underscored = module.id.replace('.', "_");
    match module.network {
        Network::Unet => {
            let mut names = vec![
                format!("lora_unet_{underscored}"),
                format!("lycoris_{underscored}"),
                format!("lora_unet_{}", module.ldm_id.replace('.', "_")),
                format!("unet.{}", module.id),
                module.id.clone(),
                format!("diffusion_model.{}", module.ldm_id),
            ];
            // Old diffusers attention processors: `attn1.processor.to_q_lora`, `to_out_lora`;
            // ComfyUI also accepts `to_out` without the `.0`.
            for (suffix, processor) in [
                (".to_q", ".processor.to_q"),
                (".to_k", ".processor.to_k"),
                (".to_v", ".processor.to_v"),
                (".to_out.0", ".processor.to_out"),
                (".to_out.0", ".to_out"),
            ] {
                if let Some(parent) = module.id.strip_suffix(suffix) {
                    names.push(format!("{parent}{processor}"));
                    names.push(format!("unet.{parent}{processor}"));
                }
            }
            names
        }
        Network::TextEncoder => {
            let mut names = vec![
                format!("lora_te_{underscored}"),
                format!("lora_te1_{underscored}"),
                format!("text_encoder.{}", module.id),
                module.id.clone(),
            ];
            // transformers >= 5.6 dropped the `text_model` wrapper; LoRAs trained there say
            // `lora_te_encoder_layers_*` and `text_encoder.encoder.layers.*`.
            let inner = module.id.strip_prefix("text_model.");
            if let Some(inner) = inner {
                names.push(format!("lora_te_{}", inner.replace('.', "_")));
                names.push(format!("lora_te1_{}", inner.replace('.', "_")));
                names.push(format!("text_encoder.{inner}"));
            }
            // Old diffusers text-encoder processors: `self_attn.to_q_lora`, `to_out_lora`.
            for (suffix, processor) in [
                (".q_proj", ".to_q"),
                (".k_proj", ".to_k"),
                (".v_proj", ".to_v"),
                (".out_proj", ".to_out"),
            ] {
                if let Some(parent) = module.id.strip_suffix(suffix) {
                    names.push(format!("text_encoder.{parent}{processor}"));
                    if let Some(inner) = parent.strip_prefix("text_model.") {
                        names.push(format!("text_encoder.{inner}{processor}"));
                    }
                }
            }
            names
        }
    }
}

/// The LDM (`openaimodel.py`) module path of a diffusers UNet module path. `up_with_attention`
/// lists the up levels that have transformers: it decides the slot of their upsampler.
fn diffusers_to_ldm(id: &str, layers_per_block: usize, up_with_attention: &[usize]) -> String {
    const TOP: &[(&str, &str)] = &[
        ("conv_in", "input_blocks.0.0"),
        ("conv_out", "out.2"),
        ("conv_norm_out", "out.0"),
        ("time_embedding.linear_1", "time_embed.0"),
        ("time_embedding.linear_2", "time_embed.2"),
    ];
    const RESNET: &[(&str, &str)] = &[
        ("norm1", "in_layers.0"),
        ("conv1", "in_layers.2"),
        ("time_emb_proj", "emb_layers.1"),
        ("norm2", "out_layers.0"),
        ("conv2", "out_layers.3"),
        ("conv_shortcut", "skip_connection"),
    ];
    if let Some((_, ldm)) = TOP.iter().find(|(diffusers, _)| *diffusers == id) {
        return (*ldm).to_string();
    }
    let resnet_child = |child: &str| -> String {
        RESNET
            .iter()
            .find(|(diffusers, _)| *diffusers == child)
            .map_or_else(|| child.to_string(), |(_, ldm)| (*ldm).to_string())
    };
    let per_level = layers_per_block + 1;
    let parts: Vec<&str> = id.splitn(5, '.').collect();
    let number = |i: usize| parts.get(i).and_then(|p| p.parse::<usize>().ok());
    let rest = |i: usize| parts.get(i..).map(|p| p.join(".")).unwrap_or_default();
    match (
        parts.first().copied(),
        number(1),
        parts.get(2).copied(),
        number(3),
    ) {
        (Some("down_blocks"), Some(level), Some("resnets"), Some(index)) => format!(
            "input_blocks.{}.0.{}",
            per_level * level + index + 1,
            resnet_child(&rest(4))
        ),
        (Some("down_blocks"), Some(level), Some("attentions"), Some(index)) => {
            format!(
                "input_blocks.{}.1.{}",
                per_level * level + index + 1,
                rest(4)
            )
        }
        (Some("down_blocks"), Some(level), Some("downsamplers"), Some(0)) => {
            format!("input_blocks.{}.0.op", per_level * (level + 1))
        }
        (Some("up_blocks"), Some(level), Some("resnets"), Some(index)) => format!(
            "output_blocks.{}.0.{}",
            per_level * level + index,
            resnet_child(&rest(4))
        ),
        (Some("up_blocks"), Some(level), Some("attentions"), Some(index)) => {
            format!("output_blocks.{}.1.{}", per_level * level + index, rest(4))
        }
        (Some("up_blocks"), Some(level), Some("upsamplers"), Some(0)) => format!(
            "output_blocks.{}.{}.conv",
            per_level * level + layers_per_block,
            if up_with_attention.contains(&level) {
                2
            } else {
                1
            }
        ),
        _ => mid_block_to_ldm(id, &resnet_child).unwrap_or_else(|| id.to_string()),
    }
}

/// `mid_block.resnets.{0,1}` -> `middle_block.{0,2}`, `mid_block.attentions.0` -> `middle_block.1`.
fn mid_block_to_ldm(id: &str, resnet_child: &dyn Fn(&str) -> String) -> Option<String> {
    let rest = id.strip_prefix("mid_block.")?;
    let (kind, rest) = rest.split_once('.')?;
    let (index, child) = rest.split_once('.')?;
    match (kind, index) {
        ("resnets", "0") => Some(format!("middle_block.0.{}", resnet_child(child))),
        ("resnets", "1") => Some(format!("middle_block.2.{}", resnet_child(child))),
        ("attentions", "0") => Some(format!("middle_block.1.{child}")),
        _ => None,
    }
}
