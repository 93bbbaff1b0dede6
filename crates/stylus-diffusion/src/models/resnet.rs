//! Convolutional building blocks shared by the UNet and the VAE: diffusers `ResnetBlock2D`,
//! `Downsample2D` and `Upsample2D`.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

use super::fused::group_norm;

/// A 3x3 convolution with padding 1 (the only kind the SD networks use besides 1x1).
pub fn conv3x3<B: Backend>(
    channels_in: usize,
    channels_out: usize,
    device: &B::Device,
) -> Conv2d<B> {
    Conv2dConfig::new([channels_in, channels_out], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(device)
}

/// A 1x1 convolution.
pub fn conv1x1<B: Backend>(
    channels_in: usize,
    channels_out: usize,
    device: &B::Device,
) -> Conv2d<B> {
    Conv2dConfig::new([channels_in, channels_out], [1, 1]).init(device)
}

/// diffusers `ResnetBlock2D` (default "time embedding added after conv1" variant).
#[derive(Module, Debug)]
pub struct ResnetBlock2D<B: Backend> {
    /// GroupNorm before `conv1`.
    pub norm1: GroupNorm<B>,
    /// First 3x3 convolution.
    pub conv1: Conv2d<B>,
    /// Projection of the time embedding (UNet only; absent in the VAE).
    pub time_emb_proj: Option<Linear<B>>,
    /// GroupNorm before `conv2`.
    pub norm2: GroupNorm<B>,
    /// Second 3x3 convolution.
    pub conv2: Conv2d<B>,
    /// 1x1 convolution on the residual path when the channel count changes.
    pub conv_shortcut: Option<Conv2d<B>>,
}

impl<B: Backend> ResnetBlock2D<B> {
    /// A block from `channels_in` to `channels_out`, with a time-embedding projection when
    /// `temb_channels` is given.
    pub fn new(
        channels_in: usize,
        channels_out: usize,
        temb_channels: Option<usize>,
        norm_groups: usize,
        norm_eps: f64,
        device: &B::Device,
    ) -> Self {
        let norm = |channels: usize| {
            GroupNormConfig::new(norm_groups, channels)
                .with_epsilon(norm_eps)
                .init(device)
        };
        Self {
            norm1: norm(channels_in),
            conv1: conv3x3(channels_in, channels_out, device),
            time_emb_proj: temb_channels.map(|t| LinearConfig::new(t, channels_out).init(device)),
            norm2: norm(channels_out),
            conv2: conv3x3(channels_out, channels_out, device),
            conv_shortcut: (channels_in != channels_out)
                .then(|| conv1x1(channels_in, channels_out, device)),
        }
    }

    /// `shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))) + temb)))`.
    pub fn forward(&self, x: Tensor<B, 4>, temb: Option<&Tensor<B, 2>>) -> Tensor<B, 4> {
        let mut hidden = self.conv1.forward(group_norm(&self.norm1, x.clone(), true));
        if let (Some(proj), Some(temb)) = (&self.time_emb_proj, temb) {
            let temb = proj.forward(silu(temb.clone()));
            hidden = hidden + temb.unsqueeze_dim::<3>(2).unsqueeze_dim::<4>(3);
        }
        let hidden = self.conv2.forward(group_norm(&self.norm2, hidden, true));
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(x),
            None => x,
        };
        shortcut + hidden
    }
}

/// diffusers `Downsample2D` with a strided 3x3 convolution.
#[derive(Module, Debug)]
pub struct Downsample2D<B: Backend> {
    /// 3x3 convolution with stride 2.
    pub conv: Conv2d<B>,
}

impl<B: Backend> Downsample2D<B> {
    /// The UNet variant: symmetric padding 1.
    pub fn padded(channels: usize, device: &B::Device) -> Self {
        Self::with_padding(channels, PaddingConfig2d::Explicit(1, 1, 1, 1), device)
    }

    /// The VAE-encoder variant (`padding=0` in diffusers): one zero row/column added at the
    /// bottom/right only, then an unpadded convolution.
    pub fn bottom_right_padded(channels: usize, device: &B::Device) -> Self {
        Self::with_padding(channels, PaddingConfig2d::Explicit(0, 0, 1, 1), device)
    }

    fn with_padding(channels: usize, padding: PaddingConfig2d, device: &B::Device) -> Self {
        Self {
            conv: Conv2dConfig::new([channels, channels], [3, 3])
                .with_stride([2, 2])
                .with_padding(padding)
                .init(device),
        }
    }

    /// Halves the spatial size (rounding up).
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.conv.forward(x)
    }
}

/// diffusers `Upsample2D`: nearest-neighbour upsampling followed by a 3x3 convolution.
#[derive(Module, Debug)]
pub struct Upsample2D<B: Backend> {
    /// 3x3 convolution after upsampling.
    pub conv: Conv2d<B>,
}

impl<B: Backend> Upsample2D<B> {
    /// An upsampler on `channels` channels.
    pub fn new(channels: usize, device: &B::Device) -> Self {
        Self {
            conv: conv3x3(channels, channels, device),
        }
    }

    /// Upsamples to `size` (`[height, width]`; twice the input size when `None`) and convolves.
    pub fn forward(&self, x: Tensor<B, 4>, size: Option<[usize; 2]>) -> Tensor<B, 4> {
        let [_, _, height, width] = x.dims();
        let [out_height, out_width] = size.unwrap_or([height * 2, width * 2]);
        self.conv.forward(nearest_resize(x, out_height, out_width))
    }
}

/// Nearest-neighbour resize with PyTorch's `mode="nearest"` index rule
/// `src = min(floor(dst * in / out), in - 1)` (computed in f32 like PyTorch), done as an index
/// selection so the result is exact on every backend.
pub fn nearest_resize<B: Backend>(
    x: Tensor<B, 4>,
    out_height: usize,
    out_width: usize,
) -> Tensor<B, 4> {
    let [_, _, height, width] = x.dims();
    let device = x.device();
    let indices = |size_in: usize, size_out: usize| {
        let scale = size_in as f32 / size_out as f32;
        let index: Vec<i64> = (0..size_out)
            .map(|dst| (((dst as f32) * scale).floor() as usize).min(size_in - 1) as i64)
            .collect();
        Tensor::<B, 1, Int>::from_data(index.as_slice(), &device)
    };
    x.select(2, indices(height, out_height))
        .select(3, indices(width, out_width))
}
