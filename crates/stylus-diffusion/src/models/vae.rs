//! diffusers `AutoencoderKL` (the SD 1.x VAE): encoder, decoder and the 1x1 `quant_conv` /
//! `post_quant_conv`.
//!
//! Entry points: [`AutoencoderKL::decode`] takes latents already divided by the scaling factor
//! (`latents / 0.18215`, what diffusers' `vae.decode` takes) and returns images in about [-1, 1]
//! `[b, 3, 8h, 8w]`; [`AutoencoderKL::decode_latents`] does the division for you.
//! [`AutoencoderKL::encode`] returns the posterior's mean and log-variance.

use std::path::Path;

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, GroupNormConfig};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::Deserialize;
use stylus_core::{Result, StylusError};

use super::attention::VaeAttention;
use super::fused::group_norm;
use super::resnet::{Downsample2D, ResnetBlock2D, Upsample2D, conv1x1, conv3x3};

/// Hyper-parameters of the VAE; field names follow diffusers' `vae/config.json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VaeConfig {
    /// Image channels (3).
    #[serde(default = "three")]
    pub in_channels: usize,
    /// Image channels out (3).
    #[serde(default = "three")]
    pub out_channels: usize,
    /// Channels per level ([128, 256, 512, 512]).
    pub block_out_channels: Vec<usize>,
    /// ResNets per encoder level (decoder levels have one more) (2).
    #[serde(default = "two")]
    pub layers_per_block: usize,
    /// Latent channels (4).
    #[serde(default = "four")]
    pub latent_channels: usize,
    /// GroupNorm groups (32).
    #[serde(default = "thirty_two")]
    pub norm_num_groups: usize,
    /// Latent scaling factor (0.18215).
    #[serde(default = "sd_scaling_factor")]
    pub scaling_factor: f64,
}

fn two() -> usize {
    2
}
fn three() -> usize {
    3
}
fn four() -> usize {
    4
}
fn thirty_two() -> usize {
    32
}
fn sd_scaling_factor() -> f64 {
    0.18215
}

impl VaeConfig {
    /// The SD 1.5 VAE.
    pub fn v1_5() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            latent_channels: 4,
            norm_num_groups: 32,
            scaling_factor: 0.18215,
        }
    }

    /// A tiny VAE for tests: channels (32, 64), one ResNet per encoder level.
    pub fn tiny() -> Self {
        Self {
            block_out_channels: vec![32, 64],
            layers_per_block: 1,
            ..Self::v1_5()
        }
    }

    /// Reads diffusers' `vae/config.json`.
    pub fn from_diffusers_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| StylusError::io(path, e))?;
        let config: Self = serde_json::from_str(&text).map_err(|e| StylusError::Json {
            path: path.to_path_buf(),
            line: Some(e.line()),
            message: e.to_string(),
            source: Some(Box::new(e)),
        })?;
        config.validate().map_err(|e| StylusError::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
            source: Some(Box::new(e)),
        })?;
        Ok(config)
    }

    /// Checks the values the networks rely on.
    pub fn validate(&self) -> Result<()> {
        if self.block_out_channels.is_empty() || self.layers_per_block == 0 {
            return Err(StylusError::InvalidArgument(
                "VAE config: empty block_out_channels or zero layers_per_block".into(),
            ));
        }
        if let Some(c) = self
            .block_out_channels
            .iter()
            .find(|c| !c.is_multiple_of(self.norm_num_groups))
        {
            return Err(StylusError::InvalidArgument(format!(
                "VAE config: {c} channels are not divisible into {} groups",
                self.norm_num_groups
            )));
        }
        Ok(())
    }

    /// Builds the VAE (lazily initialized weights) on `device`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> AutoencoderKL<B> {
        let channels = &self.block_out_channels;
        let levels = channels.len();
        let groups = self.norm_num_groups;
        let resnet =
            |c_in: usize, c_out: usize| ResnetBlock2D::new(c_in, c_out, None, groups, 1e-6, device);
        let norm = |c: usize| {
            GroupNormConfig::new(groups, c)
                .with_epsilon(1e-6)
                .init(device)
        };
        let top = channels[levels - 1];
        let mid_block = || VaeMidBlock {
            resnets: vec![resnet(top, top), resnet(top, top)],
            attentions: vec![VaeAttention::new(top, groups, device)],
        };

        let mut down_blocks = Vec::with_capacity(levels);
        let mut output_channels = channels[0];
        for (level, &level_channels) in channels.iter().enumerate() {
            let input_channels = output_channels;
            output_channels = level_channels;
            down_blocks.push(EncoderBlock {
                resnets: (0..self.layers_per_block)
                    .map(|j| {
                        resnet(
                            if j == 0 {
                                input_channels
                            } else {
                                output_channels
                            },
                            output_channels,
                        )
                    })
                    .collect(),
                downsamplers: if level + 1 == levels {
                    Vec::new()
                } else {
                    vec![Downsample2D::bottom_right_padded(output_channels, device)]
                },
            });
        }

        let mut up_blocks = Vec::with_capacity(levels);
        let mut output_channels = top;
        for up_level in 0..levels {
            let previous_output = output_channels;
            output_channels = channels[levels - 1 - up_level];
            up_blocks.push(DecoderBlock {
                resnets: (0..=self.layers_per_block)
                    .map(|j| {
                        resnet(
                            if j == 0 {
                                previous_output
                            } else {
                                output_channels
                            },
                            output_channels,
                        )
                    })
                    .collect(),
                upsamplers: if up_level + 1 == levels {
                    Vec::new()
                } else {
                    vec![Upsample2D::new(output_channels, device)]
                },
            });
        }

        let latent = self.latent_channels;
        AutoencoderKL {
            encoder: Encoder {
                conv_in: conv3x3(self.in_channels, channels[0], device),
                down_blocks,
                mid_block: mid_block(),
                conv_norm_out: norm(top),
                conv_out: conv3x3(top, 2 * latent, device),
            },
            decoder: Decoder {
                conv_in: conv3x3(latent, top, device),
                mid_block: mid_block(),
                up_blocks,
                conv_norm_out: norm(channels[0]),
                conv_out: conv3x3(channels[0], self.out_channels, device),
            },
            quant_conv: conv1x1(2 * latent, 2 * latent, device),
            post_quant_conv: conv1x1(latent, latent, device),
            scaling_factor: self.scaling_factor,
        }
    }
}

/// diffusers `AutoencoderKL`.
#[derive(Module, Debug)]
pub struct AutoencoderKL<B: Backend> {
    /// Image to posterior moments.
    pub encoder: Encoder<B>,
    /// Latents to image.
    pub decoder: Decoder<B>,
    /// 1x1 conv on the encoder's moments.
    pub quant_conv: Conv2d<B>,
    /// 1x1 conv on latents before decoding.
    pub post_quant_conv: Conv2d<B>,
    /// Latent scaling factor (0.18215 for SD 1.x).
    pub scaling_factor: f64,
}

/// The diagonal Gaussian posterior of [`AutoencoderKL::encode`].
#[derive(Debug, Clone)]
pub struct LatentDistribution<B: Backend> {
    /// Mean `[b, latent, h/8, w/8]` (unscaled; multiply by the scaling factor for diffusion).
    pub mean: Tensor<B, 4>,
    /// Log-variance, clamped to [-30, 20] as in diffusers.
    pub logvar: Tensor<B, 4>,
}

impl<B: Backend> AutoencoderKL<B> {
    /// Decodes `z` `[b, latent, h, w]` (diffusion latents divided by the scaling factor) to
    /// images `[b, 3, 8h, 8w]` in about [-1, 1].
    pub fn decode(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        self.decoder.forward(self.post_quant_conv.forward(z))
    }

    /// Decodes diffusion latents: `decode(latents / scaling_factor)`.
    pub fn decode_latents(&self, latents: Tensor<B, 4>) -> Tensor<B, 4> {
        self.decode(latents / self.scaling_factor)
    }

    /// Encodes images `[b, 3, H, W]` in [-1, 1] to the latent posterior.
    pub fn encode(&self, images: Tensor<B, 4>) -> LatentDistribution<B> {
        let moments = self.quant_conv.forward(self.encoder.forward(images));
        let latent = moments.dims()[1] / 2;
        LatentDistribution {
            mean: moments.clone().narrow(1, 0, latent),
            logvar: moments.narrow(1, latent, latent).clamp(-30.0, 20.0),
        }
    }
}

/// diffusers `Encoder`.
#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    /// Image to the first level's channels.
    pub conv_in: Conv2d<B>,
    /// `DownEncoderBlock2D` levels.
    pub down_blocks: Vec<EncoderBlock<B>>,
    /// ResNet, attention, ResNet.
    pub mid_block: VaeMidBlock<B>,
    /// Output GroupNorm.
    pub conv_norm_out: GroupNorm<B>,
    /// To `2 * latent_channels` moments.
    pub conv_out: Conv2d<B>,
}

impl<B: Backend> Encoder<B> {
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut x = self.conv_in.forward(x);
        for block in &self.down_blocks {
            for resnet in &block.resnets {
                x = resnet.forward(x, None);
            }
            for downsampler in &block.downsamplers {
                x = downsampler.forward(x);
            }
        }
        let x = self.mid_block.forward(x);
        self.conv_out
            .forward(group_norm(&self.conv_norm_out, x, true))
    }
}

/// diffusers `Decoder`.
#[derive(Module, Debug)]
pub struct Decoder<B: Backend> {
    /// Latents to the top level's channels.
    pub conv_in: Conv2d<B>,
    /// ResNet, attention, ResNet.
    pub mid_block: VaeMidBlock<B>,
    /// `UpDecoderBlock2D` levels.
    pub up_blocks: Vec<DecoderBlock<B>>,
    /// Output GroupNorm.
    pub conv_norm_out: GroupNorm<B>,
    /// To image channels.
    pub conv_out: Conv2d<B>,
}

impl<B: Backend> Decoder<B> {
    fn forward(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut x = self.mid_block.forward(self.conv_in.forward(z));
        for block in &self.up_blocks {
            for resnet in &block.resnets {
                x = resnet.forward(x, None);
            }
            for upsampler in &block.upsamplers {
                x = upsampler.forward(x, None);
            }
        }
        self.conv_out
            .forward(group_norm(&self.conv_norm_out, x, true))
    }
}

/// diffusers `DownEncoderBlock2D`.
#[derive(Module, Debug)]
pub struct EncoderBlock<B: Backend> {
    /// `resnets.N`.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// `downsamplers.0` (empty on the last level).
    pub downsamplers: Vec<Downsample2D<B>>,
}

/// diffusers `UpDecoderBlock2D`.
#[derive(Module, Debug)]
pub struct DecoderBlock<B: Backend> {
    /// `resnets.N`.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// `upsamplers.0` (empty on the last level).
    pub upsamplers: Vec<Upsample2D<B>>,
}

/// diffusers `UNetMidBlock2D` as the VAE uses it (no time embedding).
#[derive(Module, Debug)]
pub struct VaeMidBlock<B: Backend> {
    /// `resnets.0`, `resnets.1`.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// `attentions.0`.
    pub attentions: Vec<VaeAttention<B>>,
}

impl<B: Backend> VaeMidBlock<B> {
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut x = self.resnets[0].forward(x, None);
        for (attention, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            x = resnet.forward(attention.forward(x), None);
        }
        x
    }
}
