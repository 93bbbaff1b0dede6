//! `stylus merge`: bake weighted LoRAs into a checkpoint.

use std::path::PathBuf;

use stylus_core::{StylusConfig, StylusError};
use stylus_diffusion::lora::AdapterStrength;
use stylus_diffusion::lora::bake::merge_into_checkpoint;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Base checkpoint: a diffusers folder or a single-file .safetensors.
    #[arg(long, value_name = "PATH")]
    pub base: PathBuf,
    /// A LoRA to merge, `FILE[:WEIGHT]` (repeatable; weight defaults to 1).
    #[arg(long, value_name = "FILE[:W]", required = true)]
    pub lora: Vec<String>,
    /// Text-encoder multiplier (default: the same as each LoRA's weight).
    #[arg(long)]
    pub te_weight: Option<f32>,
    /// Output, in the same layout as the base (a folder or one .safetensors).
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `FILE[:WEIGHT]`: the weight is what follows the last `:` when it parses as a number.
fn parse_lora(spec: &str) -> Result<(PathBuf, f32), StylusError> {
    if let Some((file, weight)) = spec.rsplit_once(':')
        && !file.is_empty()
        && let Ok(weight) = weight.parse::<f32>()
    {
        if !weight.is_finite() {
            return Err(StylusError::InvalidArgument(format!(
                "--lora {spec}: weight must be finite"
            )));
        }
        return Ok((PathBuf::from(file), weight));
    }
    Ok((PathBuf::from(spec), 1.0))
}

pub fn run(args: Args, _config: &StylusConfig) -> Result<(), StylusError> {
    let adapters = args
        .lora
        .iter()
        .map(|spec| {
            let (path, weight) = parse_lora(spec)?;
            Ok(AdapterStrength {
                path,
                unet: weight,
                text_encoder: args.te_weight.unwrap_or(weight),
            })
        })
        .collect::<Result<Vec<_>, StylusError>>()?;
    let report = merge_into_checkpoint(&args.base, &adapters, &args.out)?;
    if args.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| StylusError::InvalidArgument(format!("report: {e}")))?;
        println!("{text}");
        return Ok(());
    }
    println!("base: {} ({})", args.base.display(), report.layout);
    for (stats, strength) in report.adapters.iter().zip(&adapters) {
        println!(
            "  {} [{}] unet x{} text encoder x{}: {} modules merged{}",
            stats.path.display(),
            stats.format,
            strength.unet,
            strength.text_encoder,
            stats.matched_modules,
            if stats.unmatched_modules.is_empty() {
                String::new()
            } else {
                format!(
                    ", {} unmatched (e.g. {})",
                    stats.unmatched_modules.len(),
                    stats.unmatched_modules[0]
                )
            }
        );
    }
    println!(
        "{} tensors changed in {:.0} ms",
        report.merged_tensors, report.millis
    );
    for file in &report.files_written {
        println!("wrote {}", file.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_specs_split_at_the_last_colon_only_for_numbers() {
        assert_eq!(
            parse_lora("a.safetensors:0.7").unwrap(),
            (PathBuf::from("a.safetensors"), 0.7)
        );
        assert_eq!(
            parse_lora("a.safetensors").unwrap(),
            (PathBuf::from("a.safetensors"), 1.0)
        );
        assert_eq!(
            parse_lora("dir:x/a.safetensors").unwrap(),
            (PathBuf::from("dir:x/a.safetensors"), 1.0)
        );
        assert_eq!(
            parse_lora("a.safetensors:-1").unwrap(),
            (PathBuf::from("a.safetensors"), -1.0)
        );
        assert!(parse_lora("a.safetensors:inf").is_err());
    }
}
