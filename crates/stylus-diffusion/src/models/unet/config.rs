//! UNet hyper-parameters: [`UNetConfig`], its SD 1.5 values, and the reader for diffusers'
//! `unet/config.json`.

use std::path::Path;

use serde::Deserialize;
use stylus_core::{Result, StylusError};

/// Hyper-parameters of an SD 1.x-family `UNet2DConditionModel`.
#[derive(Debug, Clone, PartialEq)]
pub struct UNetConfig {
    /// Latent channels in (4).
    pub in_channels: usize,
    /// Latent channels out (4).
    pub out_channels: usize,
    /// Channels of each resolution level ([320, 640, 1280, 1280]).
    pub block_out_channels: Vec<usize>,
    /// ResNet layers per down block (up blocks have one more) (2).
    pub layers_per_block: usize,
    /// Whether each down level has cross-attention transformers ([true, true, true, false]);
    /// up levels mirror it.
    pub cross_attention: Vec<bool>,
    /// Attention heads per down level ([8; 4]). diffusers calls this `attention_head_dim` in
    /// SD 1.x configs although it is the number of heads.
    pub attention_heads: Vec<usize>,
    /// Transformer blocks per `Transformer2DModel` (1).
    pub transformer_layers_per_block: usize,
    /// Width of the text conditioning (768).
    pub cross_attention_dim: usize,
    /// GroupNorm groups (32).
    pub norm_num_groups: usize,
    /// GroupNorm epsilon of ResNets and the output norm (1e-5).
    pub norm_eps: f64,
    /// Timestep embedding as `[cos, sin]` (true) or `[sin, cos]`.
    pub flip_sin_to_cos: bool,
    /// Frequency shift of the timestep embedding (0).
    pub freq_shift: f64,
}

impl UNetConfig {
    /// Stable Diffusion 1.5.
    pub fn v1_5() -> Self {
        Self {
            in_channels: 4,
            out_channels: 4,
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: 2,
            cross_attention: vec![true, true, true, false],
            attention_heads: vec![8; 4],
            transformer_layers_per_block: 1,
            cross_attention_dim: 768,
            norm_num_groups: 32,
            norm_eps: 1e-5,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
        }
    }

    /// A tiny UNet for tests: channels (32, 64), one layer per block, cross-attention width 32.
    pub fn tiny() -> Self {
        Self {
            in_channels: 4,
            out_channels: 4,
            block_out_channels: vec![32, 64],
            layers_per_block: 1,
            cross_attention: vec![true, false],
            attention_heads: vec![8, 8],
            transformer_layers_per_block: 1,
            cross_attention_dim: 32,
            norm_num_groups: 32,
            norm_eps: 1e-5,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
        }
    }

    /// Width of the time embedding (4 x the first block's channels).
    pub fn time_embed_dim(&self) -> usize {
        self.block_out_channels[0] * 4
    }

    /// The factor by which the latent is downsampled at the bottom of the UNet.
    pub fn downsample_factor(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }

    /// Checks that the configuration describes a UNet this crate can build.
    pub fn validate(&self) -> Result<()> {
        let levels = self.block_out_channels.len();
        let problem = if levels == 0 {
            Some("block_out_channels is empty".to_string())
        } else if self.cross_attention.len() != levels || self.attention_heads.len() != levels {
            Some("per-level lists have different lengths".to_string())
        } else if self.layers_per_block == 0 {
            Some("layers_per_block is 0".to_string())
        } else if let Some(channels) = self
            .block_out_channels
            .iter()
            .find(|c| !c.is_multiple_of(self.norm_num_groups))
        {
            Some(format!(
                "{channels} channels are not divisible into {} groups",
                self.norm_num_groups
            ))
        } else if let Some((channels, heads)) = self
            .block_out_channels
            .iter()
            .zip(&self.attention_heads)
            .find(|(c, h)| **h == 0 || !c.is_multiple_of(**h))
        {
            Some(format!(
                "{channels} channels are not divisible into {heads} heads"
            ))
        } else {
            None
        };
        match problem {
            Some(message) => Err(StylusError::InvalidArgument(format!(
                "UNet config: {message}"
            ))),
            None => Ok(()),
        }
    }

    /// Reads diffusers' `unet/config.json`, refusing families this crate does not run (SD 2.x
    /// v-prediction layouts are fine structurally but have `use_linear_projection`; SDXL has
    /// `addition_embed_type`).
    pub fn from_diffusers_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| StylusError::io(path, e))?;
        let raw: DiffusersUNetConfig =
            serde_json::from_str(&text).map_err(|e| StylusError::Json {
                path: path.to_path_buf(),
                line: Some(e.line()),
                message: e.to_string(),
                source: Some(Box::new(e)),
            })?;
        let config_error = |message: String| StylusError::Config {
            path: path.to_path_buf(),
            message,
            source: None,
        };
        if raw.addition_embed_type.is_some() || raw.cross_attention_dim == 2048 {
            return Err(StylusError::UnsupportedFormat {
                path: path.to_path_buf(),
                message: "this is an SDXL UNet; only SD 1.x models are supported".into(),
            });
        }
        if raw.use_linear_projection || raw.cross_attention_dim == 1024 {
            return Err(StylusError::UnsupportedFormat {
                path: path.to_path_buf(),
                message: "this is an SD 2.x UNet; only SD 1.x models are supported".into(),
            });
        }
        let levels = raw.block_out_channels.len();
        let cross_attention = raw
            .down_block_types
            .iter()
            .map(|kind| match kind.as_str() {
                "CrossAttnDownBlock2D" => Ok(true),
                "DownBlock2D" => Ok(false),
                other => Err(config_error(format!("unsupported down block type {other}"))),
            })
            .collect::<Result<Vec<_>>>()?;
        let mirrored: Vec<bool> = raw
            .up_block_types
            .iter()
            .rev()
            .map(|kind| kind == "CrossAttnUpBlock2D")
            .collect();
        if mirrored != cross_attention || cross_attention.len() != levels {
            return Err(config_error(
                "up_block_types must mirror down_block_types, one per block_out_channels".into(),
            ));
        }
        let heads = raw.num_attention_heads.unwrap_or(raw.attention_head_dim);
        let transformer_layers = raw.transformer_layers_per_block.per_level(levels);
        if transformer_layers.windows(2).any(|pair| pair[0] != pair[1]) {
            return Err(config_error(
                "transformer_layers_per_block differs between levels (an SDXL-style UNet)".into(),
            ));
        }
        let config = Self {
            in_channels: raw.in_channels,
            out_channels: raw.out_channels,
            block_out_channels: raw.block_out_channels,
            layers_per_block: raw.layers_per_block,
            cross_attention,
            attention_heads: heads.per_level(levels),
            transformer_layers_per_block: transformer_layers.first().copied().unwrap_or(1),
            cross_attention_dim: raw.cross_attention_dim,
            norm_num_groups: raw.norm_num_groups,
            norm_eps: raw.norm_eps,
            flip_sin_to_cos: raw.flip_sin_to_cos,
            freq_shift: raw.freq_shift,
        };
        config.validate().map_err(|e| config_error(e.to_string()))?;
        Ok(config)
    }
}

/// An integer or a per-level list, as diffusers writes `attention_head_dim`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum PerLevel {
    One(usize),
    Each(Vec<usize>),
}

impl PerLevel {
    fn per_level(&self, levels: usize) -> Vec<usize> {
        match self {
            Self::One(value) => vec![*value; levels],
            Self::Each(values) => values.clone(),
        }
    }
}

/// The fields of diffusers' `UNet2DConditionModel` config that matter for SD 1.x.
#[derive(Debug, Deserialize)]
struct DiffusersUNetConfig {
    #[serde(default = "four")]
    in_channels: usize,
    #[serde(default = "four")]
    out_channels: usize,
    block_out_channels: Vec<usize>,
    #[serde(default = "two")]
    layers_per_block: usize,
    down_block_types: Vec<String>,
    up_block_types: Vec<String>,
    attention_head_dim: PerLevel,
    #[serde(default)]
    num_attention_heads: Option<PerLevel>,
    #[serde(default = "one_per_level")]
    transformer_layers_per_block: PerLevel,
    cross_attention_dim: usize,
    #[serde(default = "thirty_two")]
    norm_num_groups: usize,
    #[serde(default = "norm_eps")]
    norm_eps: f64,
    #[serde(default = "yes")]
    flip_sin_to_cos: bool,
    #[serde(default)]
    freq_shift: f64,
    #[serde(default)]
    use_linear_projection: bool,
    #[serde(default)]
    addition_embed_type: Option<String>,
}

fn one_per_level() -> PerLevel {
    PerLevel::One(1)
}
fn two() -> usize {
    2
}
fn four() -> usize {
    4
}
fn thirty_two() -> usize {
    32
}
fn norm_eps() -> f64 {
    1e-5
}
fn yes() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(json: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, json).unwrap();
        (dir, path)
    }

    const SD15: &str = r#"{
        "_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": 8,
        "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": false,
        "cross_attention_dim": 768,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4,
        "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
        "out_channels": 4, "sample_size": 64,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
    }"#;

    #[test]
    fn sd15_config_json_reads_as_v1_5() {
        let (_dir, path) = write(SD15);
        assert_eq!(
            UNetConfig::from_diffusers_json(&path).unwrap(),
            UNetConfig::v1_5()
        );
    }

    #[test]
    fn per_level_head_counts_and_other_widths_are_read() {
        let json = SD15
            .replace(
                r#""attention_head_dim": 8"#,
                r#""attention_head_dim": [5, 10, 20, 20]"#,
            )
            .replace(r#""norm_num_groups": 32"#, r#""norm_num_groups": 16"#)
            .replace("[320, 640, 1280, 1280]", "[160, 320, 640, 640]");
        let (_dir, path) = write(&json);
        let config = UNetConfig::from_diffusers_json(&path).unwrap();
        assert_eq!(config.attention_heads, vec![5, 10, 20, 20]);
        assert_eq!(config.norm_num_groups, 16);
        assert_eq!(config.block_out_channels, vec![160, 320, 640, 640]);
    }

    #[test]
    fn sdxl_and_sd2_configs_are_refused() {
        let sdxl = SD15
            .replace(
                r#""cross_attention_dim": 768"#,
                r#""cross_attention_dim": 2048"#,
            )
            .replace(
                r#""in_channels": 4"#,
                r#""in_channels": 4, "addition_embed_type": "text_time""#,
            );
        let sd2 = SD15.replace(
            r#""cross_attention_dim": 768"#,
            r#""cross_attention_dim": 1024, "use_linear_projection": true"#,
        );
        for (json, name) in [(sdxl, "SDXL"), (sd2, "SD 2.x")] {
            let (_dir, path) = write(&json);
            let error = UNetConfig::from_diffusers_json(&path).unwrap_err();
            assert!(error.to_string().contains(name), "{error}");
        }
    }
}
