//! diffusers `UNet2DConditionModel` for the SD 1.x family.
//!
//! Entry point: [`UNet2DConditionModel::forward`]`(latents [b, 4, h, w], timestep, context
//! [b, 77, 768]) -> noise prediction [b, 4, h, w]`. Any latent size works (images whose sides are
//! multiples of 8 pixels); sizes that do not divide by the downsampling factor (8 for SD 1.5) are
//! brought back to the skip connections' sizes like diffusers' `upsample_size` does.
//!
//! Field names follow diffusers (`conv_in`, `time_embedding.linear_1`,
//! `down_blocks.N.attentions.M.transformer_blocks.K.attn2.to_k`, `mid_block`, `up_blocks`,
//! `conv_norm_out`, `conv_out`), so a diffusers state dict loads by name.

mod blocks;
mod config;
mod embeddings;
mod transformer;

pub use blocks::{DownBlock, MidBlock, UpBlock};
pub use config::UNetConfig;
pub use embeddings::{TimestepEmbedding, timestep_projection};
pub use transformer::{BasicTransformerBlock, FeedForward, GeGlu, Transformer2DModel};

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, GroupNormConfig};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use crate::models::fused::group_norm;
use crate::models::resnet::{Downsample2D, ResnetBlock2D, Upsample2D, conv3x3};

/// The SD 1.x denoising UNet.
#[derive(Module, Debug)]
pub struct UNet2DConditionModel<B: Backend> {
    /// Latents to the first level's channels.
    pub conv_in: Conv2d<B>,
    /// MLP on the sinusoidal timestep features.
    pub time_embedding: TimestepEmbedding<B>,
    /// Encoder levels.
    pub down_blocks: Vec<DownBlock<B>>,
    /// Bottleneck.
    pub mid_block: MidBlock<B>,
    /// Decoder levels.
    pub up_blocks: Vec<UpBlock<B>>,
    /// Output GroupNorm.
    pub conv_norm_out: GroupNorm<B>,
    /// Back to latent channels.
    pub conv_out: Conv2d<B>,
    /// Width of the sinusoidal timestep features.
    pub time_proj_dim: usize,
    /// `[cos, sin]` order of the timestep features.
    pub flip_sin_to_cos: bool,
    /// Frequency shift of the timestep features.
    pub freq_shift: f64,
}

impl UNetConfig {
    /// Builds the UNet on `device`. Weights are lazily initialized: loading a checkpoint right
    /// after this never materializes random values.
    pub fn init<B: Backend>(&self, device: &B::Device) -> UNet2DConditionModel<B> {
        let channels = &self.block_out_channels;
        let levels = channels.len();
        let temb = self.time_embed_dim();
        let resnet = |c_in: usize, c_out: usize| {
            ResnetBlock2D::new(
                c_in,
                c_out,
                Some(temb),
                self.norm_num_groups,
                self.norm_eps,
                device,
            )
        };
        let transformer = |c: usize, heads: usize| {
            Transformer2DModel::new(
                c,
                heads,
                self.transformer_layers_per_block,
                self.cross_attention_dim,
                self.norm_num_groups,
                device,
            )
        };

        let mut down_blocks = Vec::with_capacity(levels);
        let mut output_channels = channels[0];
        for (level, &level_channels) in channels.iter().enumerate() {
            let input_channels = output_channels;
            output_channels = level_channels;
            let is_last = level + 1 == levels;
            down_blocks.push(DownBlock {
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
                attentions: if self.cross_attention[level] {
                    (0..self.layers_per_block)
                        .map(|_| transformer(output_channels, self.attention_heads[level]))
                        .collect()
                } else {
                    Vec::new()
                },
                downsamplers: if is_last {
                    Vec::new()
                } else {
                    vec![Downsample2D::padded(output_channels, device)]
                },
            });
        }

        let bottom = channels[levels - 1];
        let mid_block = MidBlock {
            resnets: vec![resnet(bottom, bottom), resnet(bottom, bottom)],
            attentions: vec![transformer(bottom, self.attention_heads[levels - 1])],
        };

        let mut up_blocks = Vec::with_capacity(levels);
        let mut output_channels = channels[levels - 1];
        for up_level in 0..levels {
            let level = levels - 1 - up_level;
            let previous_output = output_channels;
            output_channels = channels[level];
            let skip_input = channels[level.saturating_sub(1)];
            let layers = self.layers_per_block + 1;
            up_blocks.push(UpBlock {
                resnets: (0..layers)
                    .map(|j| {
                        let skip = if j + 1 == layers {
                            skip_input
                        } else {
                            output_channels
                        };
                        let input = if j == 0 {
                            previous_output
                        } else {
                            output_channels
                        };
                        resnet(input + skip, output_channels)
                    })
                    .collect(),
                attentions: if self.cross_attention[level] {
                    (0..layers)
                        .map(|_| transformer(output_channels, self.attention_heads[level]))
                        .collect()
                } else {
                    Vec::new()
                },
                upsamplers: if level == 0 {
                    Vec::new()
                } else {
                    vec![Upsample2D::new(output_channels, device)]
                },
            });
        }

        UNet2DConditionModel {
            conv_in: conv3x3(self.in_channels, channels[0], device),
            time_embedding: TimestepEmbedding::new(channels[0], temb, device),
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNormConfig::new(self.norm_num_groups, channels[0])
                .with_epsilon(self.norm_eps)
                .init(device),
            conv_out: conv3x3(channels[0], self.out_channels, device),
            time_proj_dim: channels[0],
            flip_sin_to_cos: self.flip_sin_to_cos,
            freq_shift: self.freq_shift,
        }
    }
}

impl<B: Backend> UNet2DConditionModel<B> {
    /// Predicts the noise in `latents` `[b, in_channels, h, w]` at diffusion `timestep` (the same
    /// for the whole batch, e.g. a CFG pair), conditioned on `context` `[b, tokens, 768]`.
    pub fn forward(
        &self,
        latents: Tensor<B, 4>,
        timestep: f32,
        context: Tensor<B, 3>,
    ) -> Tensor<B, 4> {
        self.forward_timesteps(latents, &[timestep], context)
    }

    /// Like [`Self::forward`] with one timestep per batch item (`timesteps.len()` is 1 or `b`).
    pub fn forward_timesteps(
        &self,
        latents: Tensor<B, 4>,
        timesteps: &[f32],
        context: Tensor<B, 3>,
    ) -> Tensor<B, 4> {
        let batch = latents.dims()[0];
        let device = latents.device();
        let projection = timestep_projection::<B>(
            timesteps,
            self.time_proj_dim,
            self.flip_sin_to_cos,
            self.freq_shift,
            &device,
        );
        let features = projection.dims()[1];
        let temb = self
            .time_embedding
            .forward(projection.expand([batch, features]).cast(latents.dtype()));

        let mut x = self.conv_in.forward(latents);
        let mut skips = vec![x.clone()];
        for block in &self.down_blocks {
            x = block.forward(x, &temb, &context, &mut skips);
        }
        x = self.mid_block.forward(x, &temb, &context);
        for block in &self.up_blocks {
            x = block.forward(x, &temb, &context, &mut skips);
        }
        self.conv_out
            .forward(group_norm(&self.conv_norm_out, x, true))
    }
}
