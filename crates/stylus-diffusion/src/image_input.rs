//! Input images for img2img and inpainting: decoding with limits, fitting to the requested size,
//! and the mask.
//!
//! Decoding (PNG and JPEG): the header is read first and an image over
//! [`limits::IMAGE_PIXELS`](stylus_core::limits::IMAGE_PIXELS) pixels is refused before any pixel
//! is decoded (decompression bombs); truncated or corrupt files are [`StylusError::Image`]. Every
//! pixel layout the decoders produce is accepted and converted to float RGB in [0, 1]: 8- and
//! 16-bit, grey, palette (expanded), RGB; an alpha channel is composited on white (A1111's
//! default img2img background); a JPEG's EXIF orientation is applied first (the image as viewers
//! show it).
//!
//! Fitting ([`ResizeMode`]): Lanczos-3 resampling, like diffusers' and A1111's PIL LANCZOS (the
//! filters differ in their last bits; an image already of the requested size is not resampled,
//! so its pixels are exactly `byte / 255`).
//!
//! Masks: white = repaint. An RGBA mask with any transparency uses its alpha (opaque = repaint,
//! as A1111 reads painted masks); other masks use their luminance (ITU-R 601, PIL's `L`). The
//! mask is fitted like the image, blurred (Gaussian, sigma = `blur` pixels) and binarized at 0.5
//! as diffusers' mask processor does; the blurred mask before binarization is kept for pasting
//! the result over the original (A1111's overlay).

use std::io::{BufRead, BufReader, Cursor, Seek};
use std::path::Path;

use image::imageops::FilterType;
use image::{DynamicImage, ImageDecoder, ImageReader, Rgb32FImage};
use stylus_core::{ImageBytes, ResizeMode, Result, StylusError, limits};

/// Where an input image is read from: a file, or encoded bytes in memory (an upload) that
/// `name` stands for in messages. Both pass the same checks (signature, pixel limit before
/// decoding, allocation limit).
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    File(&'a Path),
    Memory { name: &'a Path, bytes: &'a [u8] },
}

impl<'a> Input<'a> {
    /// `bytes` when given (named `path`), else the file `path`.
    pub fn new(path: &'a Path, bytes: Option<&'a ImageBytes>) -> Self {
        match bytes {
            Some(bytes) => Self::Memory {
                name: path,
                bytes: &bytes.0,
            },
            None => Self::File(path),
        }
    }

    /// What messages call the image.
    pub fn name(&self) -> &'a Path {
        match self {
            Self::File(path) => path,
            Self::Memory { name, .. } => name,
        }
    }
}

impl<'a> From<&'a Path> for Input<'a> {
    fn from(path: &'a Path) -> Self {
        Self::File(path)
    }
}

impl<'a> From<&'a std::path::PathBuf> for Input<'a> {
    fn from(path: &'a std::path::PathBuf) -> Self {
        Self::File(path)
    }
}

/// A reader the decoders take, whichever the source.
trait Source: BufRead + Seek {}
impl<T: BufRead + Seek> Source for T {}

/// An image as float RGB in [0, 1], row-major, interleaved.
#[derive(Debug, Clone, PartialEq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    /// `width * height * 3` values.
    pub pixels: Vec<f32>,
}

impl RgbImage {
    /// Planar `[3, H, W]` values in [-1, 1] (the VAE's input, diffusers' `normalize`).
    pub fn to_planar_signed(&self) -> Vec<f32> {
        let n = (self.width * self.height) as usize;
        let mut out = vec![0.0; 3 * n];
        for (p, rgb) in self.pixels.chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * n + p] = rgb[c] * 2.0 - 1.0;
            }
        }
        out
    }
}

/// A decoded mask in [0, 1], row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct GreyImage {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<f32>,
}

/// A mask fitted to the requested size.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedMask {
    /// The blurred mask in [0, 1] (for the overlay).
    pub soft: Vec<f32>,
    /// 0 or 1 per pixel: `soft >= 0.5`.
    pub binary: Vec<f32>,
}

/// Reads an image's size from its header (after EXIF rotation), checking the pixel limit.
pub fn probe<'a>(input: impl Into<Input<'a>>) -> Result<(u32, u32)> {
    let input = input.into();
    let path = input.name();
    let mut decoder = open_decoder(input)?;
    let (width, height) = decoder.dimensions();
    let orientation = decoder
        .orientation()
        .map_err(|e| StylusError::image(path, format!("reading the EXIF orientation: {e}")))?;
    Ok(if swaps_sides(orientation) {
        (height, width)
    } else {
        (width, height)
    })
}

fn swaps_sides(orientation: image::metadata::Orientation) -> bool {
    use image::metadata::Orientation::*;
    matches!(
        orientation,
        Rotate90 | Rotate270 | Rotate90FlipH | Rotate270FlipH
    )
}

fn open_decoder(input: Input<'_>) -> Result<impl ImageDecoder + '_> {
    let path = input.name();
    let source: Box<dyn Source + '_> = match input {
        Input::File(path) => Box::new(BufReader::new(
            std::fs::File::open(path).map_err(|e| StylusError::io(path, e))?,
        )),
        Input::Memory { bytes, .. } => Box::new(Cursor::new(bytes)),
    };
    let mut reader = ImageReader::new(source)
        .with_guessed_format()
        .map_err(|e| StylusError::io(path, e))?;
    // Only the formats the crate is built with (PNG, JPEG) decode; a signature of another
    // format (GIF, WebP, ...) would fail later with a vaguer message.
    if !matches!(
        reader.format(),
        Some(image::ImageFormat::Png | image::ImageFormat::Jpeg)
    ) {
        return Err(StylusError::image(
            path,
            "not a PNG or JPEG file (unrecognized signature)",
        ));
    }
    let mut image_limits = image::Limits::default();
    // 4 channels x 4 bytes (the float conversion) per allowed pixel.
    image_limits.max_alloc = Some(limits::IMAGE_PIXELS * 16);
    reader.limits(image_limits);
    let decoder = reader
        .into_decoder()
        .map_err(|e| StylusError::image(path, e.to_string()))?;
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits::IMAGE_PIXELS || width == 0 || height == 0 {
        return Err(StylusError::image(
            path,
            format!(
                "{width}x{height} pixels; input images may have 1..={} pixels (checked before \
                 decoding)",
                limits::IMAGE_PIXELS
            ),
        ));
    }
    Ok(decoder)
}

/// Decodes `input` with its EXIF orientation applied.
fn decode(input: Input<'_>) -> Result<DynamicImage> {
    let path = input.name();
    let mut decoder = open_decoder(input)?;
    let orientation = decoder
        .orientation()
        .map_err(|e| StylusError::image(path, format!("reading the EXIF orientation: {e}")))?;
    let mut image =
        DynamicImage::from_decoder(decoder).map_err(|e| StylusError::image(path, e.to_string()))?;
    image.apply_orientation(orientation);
    Ok(image)
}

/// Decodes an image as RGB in [0, 1], alpha composited on white.
pub fn load_rgb<'a>(input: impl Into<Input<'a>>) -> Result<RgbImage> {
    let image = decode(input.into())?;
    let rgba = image.to_rgba32f();
    let (width, height) = rgba.dimensions();
    let pixels = rgba
        .pixels()
        .flat_map(|p| {
            let [r, g, b, a] = p.0;
            [r, g, b].map(|c| c * a + (1.0 - a))
        })
        .collect();
    Ok(RgbImage {
        width,
        height,
        pixels,
    })
}

/// Decodes a mask in [0, 1]: the alpha channel of an image with transparency, else luminance.
pub fn load_mask<'a>(input: impl Into<Input<'a>>) -> Result<GreyImage> {
    let image = decode(input.into())?;
    let rgba = image.to_rgba32f();
    let (width, height) = rgba.dimensions();
    let transparent = image.color().has_alpha() && rgba.pixels().any(|p| p.0[3] < 1.0);
    let pixels = rgba
        .pixels()
        .map(|p| {
            let [r, g, b, a] = p.0;
            if transparent {
                a
            } else {
                0.299 * r + 0.587 * g + 0.114 * b
            }
        })
        .collect();
    Ok(GreyImage {
        width,
        height,
        pixels,
    })
}

/// Fits `image` to `width x height` as `mode` says (no resampling when the size already fits).
pub fn fit_rgb(image: &RgbImage, width: u32, height: u32, mode: ResizeMode) -> RgbImage {
    let fitted = fit_channels::<3>(
        &image.pixels,
        (image.width, image.height),
        (width, height),
        mode,
    );
    RgbImage {
        width,
        height,
        pixels: fitted,
    }
}

/// Fits a mask to `width x height` (see [`fit_rgb`]).
pub fn fit_grey(mask: &GreyImage, width: u32, height: u32, mode: ResizeMode) -> GreyImage {
    // Resampled as three equal channels (the image crate resizes RGB float images).
    let rgb: Vec<f32> = mask.pixels.iter().flat_map(|&v| [v, v, v]).collect();
    let fitted = fit_channels::<3>(&rgb, (mask.width, mask.height), (width, height), mode);
    GreyImage {
        width,
        height,
        pixels: fitted.chunks_exact(3).map(|p| p[0]).collect(),
    }
}

fn fit_channels<const C: usize>(
    pixels: &[f32],
    (src_w, src_h): (u32, u32),
    (width, height): (u32, u32),
    mode: ResizeMode,
) -> Vec<f32> {
    if (src_w, src_h) == (width, height) {
        return pixels.to_vec();
    }
    let source =
        Rgb32FImage::from_raw(src_w, src_h, pixels.to_vec()).expect("pixel count matches the size");
    let resize = |w: u32, h: u32| {
        if (w, h) == (src_w, src_h) {
            source.clone()
        } else {
            image::imageops::resize(&source, w.max(1), h.max(1), FilterType::Lanczos3)
        }
    };
    // A1111's arithmetic (images.resize_image): the scaled side is rounded down.
    let (wide, tall) = (u64::from(width), u64::from(height));
    let (sw, sh) = (u64::from(src_w), u64::from(src_h));
    let by_height = (sw * tall / sh) as u32; // width when scaled to the requested height
    let by_width = (sh * wide / sw) as u32; // height when scaled to the requested width
    let target_wider = wide * sh > sw * tall; // requested aspect > source aspect
    let scaled = match mode {
        ResizeMode::Stretch => return resize(width, height).into_raw(),
        ResizeMode::Fill if target_wider => resize(width, by_width),
        ResizeMode::Fill => resize(by_height, height),
        ResizeMode::Fit if target_wider => resize(by_height, height),
        ResizeMode::Fit => resize(width, by_width),
    };
    let (rw, rh) = scaled.dimensions();
    // Centred; Fill crops the overflow, Fit repeats the edge pixels into the margin.
    let x0 = i64::from(width / 2) - i64::from(rw / 2);
    let y0 = i64::from(height / 2) - i64::from(rh / 2);
    let raw = scaled.as_raw();
    let mut out = Vec::with_capacity((width * height) as usize * C);
    for y in 0..i64::from(height) {
        let sy = (y - y0).clamp(0, i64::from(rh) - 1) as usize;
        for x in 0..i64::from(width) {
            let sx = (x - x0).clamp(0, i64::from(rw) - 1) as usize;
            let at = (sy * rw as usize + sx) * C;
            out.extend_from_slice(&raw[at..at + C]);
        }
    }
    out
}

/// Loads the init image fitted to `width x height`.
pub fn prepare_image<'a>(
    input: impl Into<Input<'a>>,
    width: u32,
    height: u32,
    mode: ResizeMode,
) -> Result<RgbImage> {
    Ok(fit_rgb(&load_rgb(input)?, width, height, mode))
}

/// Loads the mask for an init image of `image_size` (its size before fitting), inverts it when
/// `invert` (repaint the black area), fits it to `width x height`, blurs and binarizes it. A
/// mask of another size than the image is an error unless `resize`.
pub fn prepare_mask<'a>(
    input: impl Into<Input<'a>>,
    image_size: (u32, u32),
    (width, height): (u32, u32),
    mode: ResizeMode,
    blur: u32,
    resize: bool,
    invert: bool,
) -> Result<PreparedMask> {
    let input = input.into();
    let path = input.name();
    let mut mask = load_mask(input)?;
    if invert {
        for v in &mut mask.pixels {
            *v = 1.0 - *v;
        }
    }
    if (mask.width, mask.height) != image_size && !resize {
        return Err(StylusError::image(
            path,
            format!(
                "the mask is {}x{} but the init image is {}x{}; give a mask of the image's size \
                 or --resize-mask",
                mask.width, mask.height, image_size.0, image_size.1
            ),
        ));
    }
    let fitted = fit_grey(&mask, width, height, mode);
    let soft = if blur > 0 {
        let grey = image::ImageBuffer::<image::Luma<f32>, Vec<f32>>::from_raw(
            width,
            height,
            fitted.pixels,
        )
        .expect("pixel count matches the size");
        image::imageops::blur(&grey, blur as f32).into_raw()
    } else {
        fitted.pixels
    };
    let soft: Vec<f32> = soft.into_iter().map(|v| v.clamp(0.0, 1.0)).collect();
    let binary = soft
        .iter()
        .map(|&v| if v >= 0.5 { 1.0 } else { 0.0 })
        .collect();
    Ok(PreparedMask { soft, binary })
}

/// The mask at latent resolution: nearest neighbour, pixel `(y * factor, x * factor)` (torch's
/// `interpolate(mode="nearest")` for an exact factor).
pub fn latent_mask(binary: &[f32], width: usize, height: usize, factor: usize) -> Vec<f32> {
    let (lw, lh) = (width / factor, height / factor);
    let mut out = Vec::with_capacity(lw * lh);
    for y in 0..lh {
        for x in 0..lw {
            out.push(binary[y * factor * width + x * factor]);
        }
    }
    out
}

/// The image with the area to repaint set to 0 (grey in [-1, 1]), planar `[3, H, W]`: diffusers'
/// `init_image * (mask < 0.5)`.
pub fn masked_planar(planar_signed: &[f32], binary: &[f32]) -> Vec<f32> {
    let n = binary.len();
    planar_signed
        .iter()
        .enumerate()
        .map(|(i, &v)| if binary[i % n] < 0.5 { v } else { 0.0 })
        .collect()
}

/// A1111's overlay: the generated pixels where the (blurred) mask is on, the original elsewhere,
/// in 8-bit RGB.
pub fn overlay(generated: &mut [u8], original: &RgbImage, soft: &[f32]) {
    for ((out, orig), &m) in generated
        .chunks_exact_mut(3)
        .zip(original.pixels.chunks_exact(3))
        .zip(soft)
    {
        for c in 0..3 {
            let blended = f32::from(out[c]) * m + orig[c] * 255.0 * (1.0 - m);
            out[c] = blended.round().clamp(0.0, 255.0) as u8;
        }
    }
}
