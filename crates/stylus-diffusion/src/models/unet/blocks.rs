//! The UNet's resolution levels: diffusers `CrossAttnDownBlock2D`/`DownBlock2D` (one
//! [`DownBlock`] type, with an empty `attentions` list for the plain variant), the up-block
//! counterparts ([`UpBlock`]) and `UNetMidBlock2DCrossAttn` ([`MidBlock`]).

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::transformer::Transformer2DModel;
use crate::models::resnet::{Downsample2D, ResnetBlock2D, Upsample2D};

/// A down level: ResNets (each followed by a transformer when `attentions` is non-empty) and an
/// optional strided-conv downsampler.
#[derive(Module, Debug)]
pub struct DownBlock<B: Backend> {
    /// `resnets.N`.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// `attentions.N` (empty for `DownBlock2D`).
    pub attentions: Vec<Transformer2DModel<B>>,
    /// `downsamplers.0` (empty on the last level).
    pub downsamplers: Vec<Downsample2D<B>>,
}

impl<B: Backend> DownBlock<B> {
    /// Runs the level and appends every output the up path will consume to `skips`.
    pub fn forward(
        &self,
        mut x: Tensor<B, 4>,
        temb: &Tensor<B, 2>,
        context: &Tensor<B, 3>,
        skips: &mut Vec<Tensor<B, 4>>,
    ) -> Tensor<B, 4> {
        for (index, resnet) in self.resnets.iter().enumerate() {
            x = resnet.forward(x, Some(temb));
            if let Some(attention) = self.attentions.get(index) {
                x = attention.forward(x, context);
            }
            skips.push(x.clone());
        }
        for downsampler in &self.downsamplers {
            x = downsampler.forward(x);
            skips.push(x.clone());
        }
        x
    }
}

/// An up level: ResNets over `[x, skip]` concatenations (each followed by a transformer when
/// `attentions` is non-empty) and an optional nearest-upsampling conv.
#[derive(Module, Debug)]
pub struct UpBlock<B: Backend> {
    /// `resnets.N`.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// `attentions.N` (empty for `UpBlock2D`).
    pub attentions: Vec<Transformer2DModel<B>>,
    /// `upsamplers.0` (empty on the last level).
    pub upsamplers: Vec<Upsample2D<B>>,
}

impl<B: Backend> UpBlock<B> {
    /// Runs the level, popping one skip tensor per ResNet from the end of `skips`. After the
    /// level, the upsampler targets the spatial size of the next skip tensor, which is how
    /// latent sizes that do not divide by the downsampling factor come back to their size.
    pub fn forward(
        &self,
        mut x: Tensor<B, 4>,
        temb: &Tensor<B, 2>,
        context: &Tensor<B, 3>,
        skips: &mut Vec<Tensor<B, 4>>,
    ) -> Tensor<B, 4> {
        for (index, resnet) in self.resnets.iter().enumerate() {
            let skip = skips
                .pop()
                .expect("the down path pushes one skip per up-path ResNet");
            x = resnet.forward(Tensor::cat(vec![x, skip], 1), Some(temb));
            if let Some(attention) = self.attentions.get(index) {
                x = attention.forward(x, context);
            }
        }
        for upsampler in &self.upsamplers {
            let size = skips.last().map(|skip| {
                let [_, _, height, width] = skip.dims();
                [height, width]
            });
            x = upsampler.forward(x, size);
        }
        x
    }
}

/// diffusers `UNetMidBlock2DCrossAttn`: ResNet, then (transformer, ResNet) pairs.
#[derive(Module, Debug)]
pub struct MidBlock<B: Backend> {
    /// `resnets.0`, `resnets.1`.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// `attentions.0`.
    pub attentions: Vec<Transformer2DModel<B>>,
}

impl<B: Backend> MidBlock<B> {
    /// Runs the bottleneck.
    pub fn forward(
        &self,
        x: Tensor<B, 4>,
        temb: &Tensor<B, 2>,
        context: &Tensor<B, 3>,
    ) -> Tensor<B, 4> {
        let mut x = self.resnets[0].forward(x, Some(temb));
        for (attention, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            x = attention.forward(x, context);
            x = resnet.forward(x, Some(temb));
        }
        x
    }
}
