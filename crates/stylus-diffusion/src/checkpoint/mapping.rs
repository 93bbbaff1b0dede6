//! The one name table between checkpoint layouts: single-file LDM keys (CompVis
//! `openaimodel.py` / `autoencoder` module paths, as Civitai distributes SD 1.x checkpoints) to
//! diffusers/transformers keys, which are our struct paths.
//!
//! Also: the legacy diffusers VAE attention spelling (`query/key/value/proj_attn`), the
//! text-encoder `text_model.` prefix that transformers >= 5.6 no longer writes, the buffers a
//! real single file carries that are not weights, and the detection of other architectures.

use std::collections::{BTreeMap, BTreeSet};

use super::Component;

/// Prefix of UNet tensors in a single-file checkpoint.
pub const LDM_UNET_PREFIX: &str = "model.diffusion_model.";
/// Prefix of VAE tensors in a single-file checkpoint.
pub const LDM_VAE_PREFIX: &str = "first_stage_model.";
/// Prefix of text-encoder tensors in a single-file checkpoint (followed by `text_model.` or not).
pub const LDM_TEXT_PREFIX: &str = "cond_stage_model.transformer.";

/// LDM `ResBlock` submodules -> diffusers `ResnetBlock2D` fields.
const UNET_RESNET: &[(&str, &str)] = &[
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("emb_layers.1", "time_emb_proj"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("skip_connection", "conv_shortcut"),
];

/// LDM UNet top-level modules -> diffusers.
const UNET_TOP: &[(&str, &str)] = &[
    ("time_embed.0", "time_embedding.linear_1"),
    ("time_embed.2", "time_embedding.linear_2"),
    ("input_blocks.0.0", "conv_in"),
    ("out.0", "conv_norm_out"),
    ("out.2", "conv_out"),
];

/// LDM VAE modules -> diffusers (within `encoder.`/`decoder.`).
const VAE_TOP: &[(&str, &str)] = &[
    ("norm_out", "conv_norm_out"),
    ("mid.block_1", "mid_block.resnets.0"),
    ("mid.block_2", "mid_block.resnets.1"),
    ("mid.attn_1", "mid_block.attentions.0"),
];

/// LDM VAE resnet / attention submodules -> diffusers. The attention projections are 1x1
/// convolutions in LDM and linears in diffusers (see [`MappedKey::squeeze_1x1`]).
const VAE_INNER: &[(&str, &str)] = &[
    ("nin_shortcut", "conv_shortcut"),
    ("norm", "group_norm"),
    ("q", "to_q"),
    ("k", "to_k"),
    ("v", "to_v"),
    ("proj_out", "to_out.0"),
];

/// Old diffusers VAE attention names -> current ones.
const LEGACY_VAE_ATTENTION: &[(&str, &str)] = &[
    ("query", "to_q"),
    ("key", "to_k"),
    ("value", "to_v"),
    ("proj_attn", "to_out.0"),
];

/// DDPM schedule buffers and other non-weight tensors at the top level of LDM checkpoints.
const IGNORED_TOP_LEVEL: &[&str] = &[
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "logvar",
];

/// Prefixes of tensors that are known not to be weights we load (EMA copies and counters).
const IGNORED_PREFIXES: &[&str] = &["model_ema."];

/// The text encoder's position-id buffer, present in older transformers exports.
const POSITION_IDS: &str = "text_model.embeddings.position_ids";

/// A file key translated to our (diffusers) name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedKey {
    /// Which network the tensor belongs to.
    pub component: Component,
    /// diffusers/transformers name, e.g. `down_blocks.0.resnets.1.conv1.weight`.
    pub name: String,
    /// The file holds a `[o, i, 1, 1]` convolution for what is a `[o, i]` linear here.
    pub squeeze_1x1: bool,
}

/// What the loader does with one key of a single-file checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyFate {
    /// Load it under this name.
    Load(MappedKey),
    /// A known non-weight tensor (schedule buffer, EMA copy, position ids).
    Ignore,
    /// Not part of an SD 1.x checkpoint: an error.
    Unexpected,
}

/// The block structure of an LDM UNet, needed to turn `input_blocks.N` indices into levels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdmUNetLayout {
    /// ResNets per down level.
    pub layers_per_block: usize,
    /// Whether each level has transformers (decides where the up-path upsampler sits).
    pub cross_attention: Vec<bool>,
}

impl LdmUNetLayout {
    /// Reads the layout from LDM UNet keys (without the `model.diffusion_model.` prefix):
    /// downsamplers are `input_blocks.N.0.op`, so the first one's index gives the ResNets per
    /// level and the number of input blocks gives the number of levels.
    pub fn infer<'a>(keys: impl Iterator<Item = &'a str> + Clone) -> Option<Self> {
        let block_index = |key: &str, prefix: &str| -> Option<usize> {
            key.strip_prefix(prefix)?.split('.').next()?.parse().ok()
        };
        let input_blocks = keys
            .clone()
            .filter_map(|k| block_index(k, "input_blocks."))
            .max()?
            + 1;
        let first_downsampler = keys
            .clone()
            .filter(|k| k.contains(".0.op."))
            .filter_map(|k| block_index(k, "input_blocks."))
            .min();
        let layers_per_block = match first_downsampler {
            Some(index) => index.checked_sub(1)?,
            None => input_blocks.checked_sub(1)?,
        };
        if layers_per_block == 0 || !input_blocks.is_multiple_of(layers_per_block + 1) {
            return None;
        }
        let levels = input_blocks / (layers_per_block + 1);
        let keys: BTreeSet<&str> = keys.collect();
        let cross_attention = (0..levels)
            .map(|level| {
                let first = 1 + level * (layers_per_block + 1);
                keys.contains(format!("input_blocks.{first}.1.proj_in.weight").as_str())
            })
            .collect();
        Some(Self {
            layers_per_block,
            cross_attention,
        })
    }
}

/// Decides the fate of one single-file key. `vae_levels` is the number of VAE levels (the LDM
/// decoder numbers its levels bottom-up, diffusers top-down).
pub fn ldm_key_fate(key: &str, unet: &LdmUNetLayout, vae_levels: usize) -> KeyFate {
    if IGNORED_TOP_LEVEL.contains(&key) || IGNORED_PREFIXES.iter().any(|p| key.starts_with(p)) {
        return KeyFate::Ignore;
    }
    if let Some(rest) = key.strip_prefix(LDM_TEXT_PREFIX) {
        let name = text_encoder_name(rest);
        if name == POSITION_IDS {
            return KeyFate::Ignore;
        }
        return load(Component::TextEncoder, name, false);
    }
    if let Some(rest) = key.strip_prefix(LDM_UNET_PREFIX) {
        return match ldm_unet_to_diffusers(rest, unet) {
            Some(name) => load(Component::Unet, name, false),
            None => KeyFate::Unexpected,
        };
    }
    if let Some(rest) = key.strip_prefix(LDM_VAE_PREFIX) {
        return match ldm_vae_to_diffusers(rest, vae_levels) {
            Some((name, squeeze_1x1)) => load(Component::Vae, name, squeeze_1x1),
            None => KeyFate::Unexpected,
        };
    }
    KeyFate::Unexpected
}

fn load(component: Component, name: String, squeeze_1x1: bool) -> KeyFate {
    KeyFate::Load(MappedKey {
        component,
        name,
        squeeze_1x1,
    })
}

/// The fate of a key of a diffusers folder's component file.
pub fn diffusers_key_fate(component: Component, key: &str) -> KeyFate {
    match component {
        Component::TextEncoder => {
            let name = text_encoder_name(key);
            if name == POSITION_IDS {
                KeyFate::Ignore
            } else {
                load(component, name, false)
            }
        }
        Component::Vae => load(component, legacy_vae_attention_name(key), false),
        Component::Unet => load(component, key.to_string(), false),
    }
}

/// Adds the `text_model.` prefix that transformers >= 5.6 no longer writes.
pub fn text_encoder_name(key: &str) -> String {
    if key.starts_with("text_model.") {
        key.to_string()
    } else {
        format!("text_model.{key}")
    }
}

/// Renames old diffusers VAE attention keys (`mid_block.attentions.0.query.weight`) to the
/// current spelling (`...to_q.weight`); other keys are returned unchanged.
pub fn legacy_vae_attention_name(key: &str) -> String {
    let Some((module_path, param)) = key.rsplit_once('.') else {
        return key.to_string();
    };
    let Some((parent, module)) = module_path.rsplit_once('.') else {
        return key.to_string();
    };
    if !parent.contains("attentions") {
        return key.to_string();
    }
    match LEGACY_VAE_ATTENTION.iter().find(|(old, _)| *old == module) {
        Some((_, new)) => format!("{parent}.{new}.{param}"),
        None => key.to_string(),
    }
}

/// Replaces the longest matching module prefix of `path` through `table`.
fn replace_prefix(path: &str, table: &[(&str, &str)]) -> Option<String> {
    table
        .iter()
        .filter(|(from, _)| path == *from || path.starts_with(&format!("{from}.")))
        .max_by_key(|(from, _)| from.len())
        .map(|(from, to)| format!("{to}{}", &path[from.len()..]))
}

/// An LDM UNet key (without `model.diffusion_model.`) as a diffusers UNet key.
///
/// Public so that LoRA files with LDM-named keys (`lora_unet_input_blocks_...`) can be mapped
/// through the same table.
pub fn ldm_unet_to_diffusers(key: &str, layout: &LdmUNetLayout) -> Option<String> {
    if let Some(name) = replace_prefix(key, UNET_TOP) {
        return Some(name);
    }
    let per_level = layout.layers_per_block + 1;
    if let Some(rest) = key.strip_prefix("middle_block.") {
        let (slot, inner) = rest.split_once('.')?;
        return match slot {
            "0" | "2" => Some(format!(
                "mid_block.resnets.{}.{}",
                if slot == "0" { 0 } else { 1 },
                replace_prefix(inner, UNET_RESNET)?
            )),
            "1" => Some(format!("mid_block.attentions.0.{inner}")),
            _ => None,
        };
    }
    let (block_kind, rest) = key.split_once('.')?;
    let (index, rest) = rest.split_once('.')?;
    let index: usize = index.parse().ok()?;
    let (slot, inner) = rest.split_once('.')?;
    match block_kind {
        "input_blocks" => {
            let level = index.checked_sub(1)? / per_level;
            let position = (index - 1) % per_level;
            match (slot, position == layout.layers_per_block) {
                ("0", false) => Some(format!(
                    "down_blocks.{level}.resnets.{position}.{}",
                    replace_prefix(inner, UNET_RESNET)?
                )),
                ("1", false) => Some(format!("down_blocks.{level}.attentions.{position}.{inner}")),
                ("0", true) => inner
                    .strip_prefix("op.")
                    .map(|param| format!("down_blocks.{level}.downsamplers.0.conv.{param}")),
                _ => None,
            }
        }
        "output_blocks" => {
            let up_level = index / per_level;
            let position = index % per_level;
            if let Some(param) = inner.strip_prefix("conv.").filter(|_| slot != "0") {
                return Some(format!("up_blocks.{up_level}.upsamplers.0.conv.{param}"));
            }
            match slot {
                "0" => Some(format!(
                    "up_blocks.{up_level}.resnets.{position}.{}",
                    replace_prefix(inner, UNET_RESNET)?
                )),
                "1" => Some(format!(
                    "up_blocks.{up_level}.attentions.{position}.{inner}"
                )),
                _ => None,
            }
        }
        _ => None,
    }
}

/// An LDM VAE key (without `first_stage_model.`) as a diffusers VAE key, and whether the tensor
/// is a 1x1 convolution to squeeze into a linear weight.
pub fn ldm_vae_to_diffusers(key: &str, levels: usize) -> Option<(String, bool)> {
    if key.starts_with("quant_conv.") || key.starts_with("post_quant_conv.") {
        return Some((key.to_string(), false));
    }
    let (side, rest) = key.split_once('.')?;
    if side != "encoder" && side != "decoder" {
        return None;
    }
    let squeeze_1x1 = rest.starts_with("mid.attn_1.") && !rest.starts_with("mid.attn_1.norm.");
    let inner = |path: &str| replace_prefix(path, VAE_INNER).unwrap_or_else(|| path.to_string());
    let mapped = if rest.starts_with("conv_in.") || rest.starts_with("conv_out.") {
        rest.to_string()
    } else if let Some(top) = replace_prefix(rest, VAE_TOP) {
        // Inside the mid block the submodule names still need renaming (`attn_1.q` -> `to_q`).
        match top.strip_prefix("mid_block.") {
            Some(mid) => {
                let (kind, tail) = mid.split_once('.')?;
                let (index, tail) = tail.split_once('.')?;
                format!("mid_block.{kind}.{index}.{}", inner(tail))
            }
            None => top,
        }
    } else {
        let (level_kind, rest) = rest.split_once('.')?;
        let (level, rest) = rest.split_once('.')?;
        let level: usize = level.parse().ok()?;
        let (blocks, level) = match (side, level_kind) {
            ("encoder", "down") => ("down_blocks", level),
            ("decoder", "up") => ("up_blocks", levels.checked_sub(level + 1)?),
            _ => return None,
        };
        if let Some(param) = rest.strip_prefix("downsample.conv.") {
            format!("{blocks}.{level}.downsamplers.0.conv.{param}")
        } else if let Some(param) = rest.strip_prefix("upsample.conv.") {
            format!("{blocks}.{level}.upsamplers.0.conv.{param}")
        } else {
            let (index, tail) = rest.strip_prefix("block.")?.split_once('.')?;
            format!("{blocks}.{level}.resnets.{index}.{}", inner(tail))
        }
    };
    Some((format!("{side}.{mapped}"), squeeze_1x1))
}

/// Names the architecture of a single-file checkpoint that is not SD 1.x, from its keys and the
/// width of its cross-attention, or `None` when it looks like SD 1.x.
pub fn foreign_architecture(shapes: &BTreeMap<String, Vec<usize>>) -> Option<String> {
    let has_prefix = |prefix: &str| shapes.keys().any(|k| k.starts_with(prefix));
    if has_prefix("conditioner.embedders.") {
        return Some("an SDXL checkpoint (conditioner.embedders.* text encoders)".into());
    }
    if has_prefix("model.diffusion_model.label_emb.") {
        return Some("an SDXL-style checkpoint (model.diffusion_model.label_emb.*)".into());
    }
    if has_prefix("cond_stage_model.model.") {
        return Some(
            "an SD 2.x checkpoint (OpenCLIP text encoder cond_stage_model.model.*)".into(),
        );
    }
    let context_width = shapes
        .iter()
        .find(|(k, s)| {
            k.starts_with(LDM_UNET_PREFIX) && k.ends_with("attn2.to_k.weight") && s.len() == 2
        })
        .map(|(_, s)| s[1]);
    match context_width {
        Some(1024) => Some("an SD 2.x checkpoint (cross-attention width 1024)".into()),
        Some(2048) => Some("an SDXL checkpoint (cross-attention width 2048)".into()),
        _ => {
            let linear_projection = shapes.iter().any(|(k, s)| {
                k.starts_with(LDM_UNET_PREFIX) && k.ends_with("proj_in.weight") && s.len() == 2
            });
            linear_projection
                .then(|| "an SD 2.x checkpoint (linear proj_in in the UNet transformers)".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd15() -> LdmUNetLayout {
        LdmUNetLayout {
            layers_per_block: 2,
            cross_attention: vec![true, true, true, false],
        }
    }

    #[test]
    fn unet_keys_of_sd15_map_to_diffusers() {
        let cases = [
            ("time_embed.0.weight", "time_embedding.linear_1.weight"),
            ("input_blocks.0.0.bias", "conv_in.bias"),
            (
                "input_blocks.1.0.in_layers.0.weight",
                "down_blocks.0.resnets.0.norm1.weight",
            ),
            (
                "input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight",
                "down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k.weight",
            ),
            (
                "input_blocks.3.0.op.weight",
                "down_blocks.0.downsamplers.0.conv.weight",
            ),
            (
                "input_blocks.4.0.skip_connection.weight",
                "down_blocks.1.resnets.0.conv_shortcut.weight",
            ),
            (
                "input_blocks.11.0.emb_layers.1.bias",
                "down_blocks.3.resnets.1.time_emb_proj.bias",
            ),
            (
                "middle_block.0.in_layers.2.weight",
                "mid_block.resnets.0.conv1.weight",
            ),
            (
                "middle_block.1.proj_out.weight",
                "mid_block.attentions.0.proj_out.weight",
            ),
            (
                "middle_block.2.out_layers.3.weight",
                "mid_block.resnets.1.conv2.weight",
            ),
            (
                "output_blocks.2.1.conv.weight",
                "up_blocks.0.upsamplers.0.conv.weight",
            ),
            (
                "output_blocks.5.2.conv.bias",
                "up_blocks.1.upsamplers.0.conv.bias",
            ),
            (
                "output_blocks.5.1.norm.weight",
                "up_blocks.1.attentions.2.norm.weight",
            ),
            (
                "output_blocks.11.0.out_layers.0.bias",
                "up_blocks.3.resnets.2.norm2.bias",
            ),
            ("out.2.weight", "conv_out.weight"),
        ];
        for (ldm, diffusers) in cases {
            assert_eq!(
                ldm_unet_to_diffusers(ldm, &sd15()).as_deref(),
                Some(diffusers),
                "{ldm}"
            );
        }
        assert_eq!(
            ldm_unet_to_diffusers("input_blocks.1.0.bogus.weight", &sd15()),
            None
        );
    }

    #[test]
    fn vae_keys_map_with_reversed_decoder_levels() {
        let cases = [
            (
                "encoder.down.0.block.1.conv2.weight",
                "encoder.down_blocks.0.resnets.1.conv2.weight",
                false,
            ),
            (
                "encoder.down.1.downsample.conv.bias",
                "encoder.down_blocks.1.downsamplers.0.conv.bias",
                false,
            ),
            (
                "decoder.up.3.block.0.nin_shortcut.weight",
                "decoder.up_blocks.0.resnets.0.conv_shortcut.weight",
                false,
            ),
            (
                "decoder.up.1.upsample.conv.weight",
                "decoder.up_blocks.2.upsamplers.0.conv.weight",
                false,
            ),
            (
                "decoder.mid.attn_1.q.weight",
                "decoder.mid_block.attentions.0.to_q.weight",
                true,
            ),
            (
                "encoder.mid.attn_1.proj_out.bias",
                "encoder.mid_block.attentions.0.to_out.0.bias",
                true,
            ),
            (
                "encoder.mid.attn_1.norm.weight",
                "encoder.mid_block.attentions.0.group_norm.weight",
                false,
            ),
            (
                "decoder.mid.block_2.norm1.bias",
                "decoder.mid_block.resnets.1.norm1.bias",
                false,
            ),
            (
                "encoder.norm_out.weight",
                "encoder.conv_norm_out.weight",
                false,
            ),
            ("post_quant_conv.weight", "post_quant_conv.weight", false),
        ];
        for (ldm, diffusers, squeeze) in cases {
            assert_eq!(
                ldm_vae_to_diffusers(ldm, 4),
                Some((diffusers.to_string(), squeeze)),
                "{ldm}"
            );
        }
    }

    #[test]
    fn layout_is_inferred_from_downsampler_positions() {
        let keys = [
            "input_blocks.0.0.weight",
            "input_blocks.1.0.in_layers.0.weight",
            "input_blocks.1.1.proj_in.weight",
            "input_blocks.3.0.op.weight",
            "input_blocks.6.0.op.weight",
            "input_blocks.9.0.op.weight",
            "input_blocks.11.0.in_layers.0.weight",
        ];
        let layout = LdmUNetLayout::infer(keys.iter().copied()).unwrap();
        assert_eq!(layout.layers_per_block, 2);
        assert_eq!(layout.cross_attention, vec![true, false, false, false]);
    }

    #[test]
    fn legacy_vae_attention_names_are_renamed() {
        assert_eq!(
            legacy_vae_attention_name("decoder.mid_block.attentions.0.proj_attn.weight"),
            "decoder.mid_block.attentions.0.to_out.0.weight"
        );
        assert_eq!(
            legacy_vae_attention_name("encoder.mid_block.attentions.0.query.bias"),
            "encoder.mid_block.attentions.0.to_q.bias"
        );
        assert_eq!(
            legacy_vae_attention_name("decoder.mid_block.resnets.0.conv1.weight"),
            "decoder.mid_block.resnets.0.conv1.weight"
        );
    }
}
