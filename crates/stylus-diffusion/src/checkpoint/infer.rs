//! Model configs from tensor shapes, for single-file checkpoints (and diffusers folders without
//! `config.json`). Head counts and GroupNorm groups appear in no shape: SD 1.x values are
//! assumed (UNet 8 heads, 32 groups; CLIP 12 heads; QuickGELU).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use stylus_core::{Result, StylusError};

use crate::models::clip::{ClipActivation, ClipTextConfig};
use crate::models::unet::UNetConfig;
use crate::models::vae::VaeConfig;

/// diffusers-named tensor shapes (PyTorch layout) of one network.
pub type Shapes = BTreeMap<String, Vec<usize>>;

struct ShapeReader<'a> {
    shapes: &'a Shapes,
    file: &'a Path,
    what: &'a str,
}

impl ShapeReader<'_> {
    fn dim(&self, key: &str, axis: usize) -> Result<usize> {
        self.shapes
            .get(key)
            .and_then(|shape| shape.get(axis).copied())
            .ok_or_else(|| StylusError::Model {
                path: self.file.to_path_buf(),
                message: format!("cannot infer the {} config: no tensor `{key}`", self.what),
            })
    }

    /// The distinct integers `N` of keys starting with `{prefix}N.`.
    fn indices(&self, prefix: &str) -> BTreeSet<usize> {
        self.shapes
            .keys()
            .filter_map(|k| k.strip_prefix(prefix)?.split('.').next()?.parse().ok())
            .collect()
    }

    fn has_prefix(&self, prefix: &str) -> bool {
        self.shapes.keys().any(|k| k.starts_with(prefix))
    }
}

fn invalid(file: &Path, error: StylusError) -> StylusError {
    StylusError::Model {
        path: file.to_path_buf(),
        message: error.to_string(),
    }
}

/// The UNet config from diffusers-named UNet shapes.
pub fn unet_config(shapes: &Shapes, file: &Path) -> Result<UNetConfig> {
    let read = ShapeReader {
        shapes,
        file,
        what: "UNet",
    };
    let levels = read.indices("down_blocks.").len();
    let block_out_channels = (0..levels)
        .map(|level| read.dim(&format!("down_blocks.{level}.resnets.0.conv1.weight"), 0))
        .collect::<Result<Vec<_>>>()?;
    let cross_attention: Vec<bool> = (0..levels)
        .map(|level| read.has_prefix(&format!("down_blocks.{level}.attentions.")))
        .collect();
    let transformer_layers_per_block = read
        .indices("mid_block.attentions.0.transformer_blocks.")
        .len();
    let config = UNetConfig {
        in_channels: read.dim("conv_in.weight", 1)?,
        out_channels: read.dim("conv_out.weight", 0)?,
        block_out_channels,
        layers_per_block: read.indices("down_blocks.0.resnets.").len(),
        cross_attention,
        attention_heads: vec![8; levels],
        transformer_layers_per_block,
        cross_attention_dim: read.dim(
            "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight",
            1,
        )?,
        norm_num_groups: 32,
        norm_eps: 1e-5,
        flip_sin_to_cos: true,
        freq_shift: 0.0,
    };
    config.validate().map_err(|e| invalid(file, e))?;
    Ok(config)
}

/// The VAE config from diffusers-named VAE shapes.
pub fn vae_config(shapes: &Shapes, file: &Path) -> Result<VaeConfig> {
    let read = ShapeReader {
        shapes,
        file,
        what: "VAE",
    };
    let levels = read.indices("encoder.down_blocks.").len();
    let block_out_channels = (0..levels)
        .map(|level| {
            read.dim(
                &format!("encoder.down_blocks.{level}.resnets.0.conv1.weight"),
                0,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let config = VaeConfig {
        in_channels: read.dim("encoder.conv_in.weight", 1)?,
        out_channels: read.dim("decoder.conv_out.weight", 0)?,
        block_out_channels,
        layers_per_block: read.indices("encoder.down_blocks.0.resnets.").len(),
        latent_channels: read.dim("decoder.conv_in.weight", 1)?,
        norm_num_groups: 32,
        scaling_factor: 0.18215,
    };
    config.validate().map_err(|e| invalid(file, e))?;
    Ok(config)
}

/// The text-encoder config from transformers-named shapes (with `text_model.`).
pub fn clip_config(shapes: &Shapes, file: &Path) -> Result<ClipTextConfig> {
    let read = ShapeReader {
        shapes,
        file,
        what: "text encoder",
    };
    let config = ClipTextConfig {
        vocab_size: read.dim("text_model.embeddings.token_embedding.weight", 0)?,
        hidden_size: read.dim("text_model.embeddings.token_embedding.weight", 1)?,
        intermediate_size: read.dim("text_model.encoder.layers.0.mlp.fc1.weight", 0)?,
        num_hidden_layers: read.indices("text_model.encoder.layers.").len(),
        num_attention_heads: 12,
        max_position_embeddings: read.dim("text_model.embeddings.position_embedding.weight", 0)?,
        hidden_act: ClipActivation::QuickGelu,
        layer_norm_eps: 1e-5,
    };
    config.validate().map_err(|e| invalid(file, e))?;
    Ok(config)
}
